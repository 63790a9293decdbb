"""The task payload framing: EditRequest with multi-MB images, byte for byte."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from app.domain.edit import EditRequest, Image, ImageRef
from app.tasks.payload import PayloadError, decode_request, encode_request, request_fingerprint
from tests.support.spool import Spooler


def _request() -> EditRequest:
    big = os.urandom(6 * 1024 * 1024)
    other = os.urandom(3 * 1024 * 1024 + 7)
    mask = os.urandom(512 * 1024)
    return EditRequest(
        model="gpt-image-2",
        prompt="make it blue ✓",
        image_refs=[
            ImageRef(param="image[0]", data=big),
            ImageRef(param="image[1]", url="https://example.com/a.png"),
        ],
        body_kind="multipart",
        mask_ref=ImageRef(param="mask", data=mask),
        size="2048x1152",
        quality="high",
        output_compression=80,
        stream=False,
        callback_url="https://hooks.example.com/x",
        images=[
            Image(data=big, mime="image/png", width=4000, height=3000, has_alpha=True),
            Image(data=other, mime="image/webp", width=1024, height=1024),
        ],
        mask=Image(data=mask, mime="image/png", width=4000, height=3000, has_alpha=True),
    )


def test_round_trip_with_multi_megabyte_images() -> None:
    req = _request()
    meta = {"cost": 300000, "tier": "other", "base_url": "https://gw.example"}
    blob = encode_request(req, meta=meta)
    # resolved images are stored once: ref upload bytes are dropped by default
    raw = sum(len(i.data) for i in req.images) + len(req.mask.data)  # type: ignore[union-attr]
    assert raw < len(blob) < raw + 4096
    back, back_meta = decode_request(blob)
    assert back_meta == meta
    assert back.images == req.images and back.mask == req.mask
    assert [(r.param, r.url, r.data) for r in back.image_refs] == [
        ("image[0]", None, None),
        ("image[1]", "https://example.com/a.png", None),
    ]
    assert back.mask_ref == ImageRef(param="mask")
    assert replace(back, image_refs=[], mask_ref=None) == replace(req, image_refs=[], mask_ref=None)


def test_unresolved_refs_keep_their_bytes() -> None:
    req = replace(_request(), images=[], mask=None)
    back, meta = decode_request(encode_request(req))
    assert meta == {}
    assert back.image_refs == req.image_refs and back.mask_ref == req.mask_ref
    assert back.images == [] and back.mask is None


@pytest.mark.parametrize("cut", [0, 3, 9, 100, -1])
def test_damaged_payloads_are_refused(cut: int) -> None:
    blob = encode_request(replace(_request(), images=[], mask=None, mask_ref=None))
    with pytest.raises(PayloadError):
        decode_request(blob[:cut])
    with pytest.raises(PayloadError):
        decode_request(blob + b"x")


def test_fingerprint_tracks_what_the_client_sent() -> None:
    req = _request()
    fp = request_fingerprint(req)
    assert fp == request_fingerprint(replace(req))
    assert fp == request_fingerprint(replace(req, images=[], mask=None))  # resolution irrelevant
    assert fp != request_fingerprint(replace(req, prompt="make it red"))
    refs = [ImageRef(param="image[0]", data=b"other"), req.image_refs[1]]
    assert fp != request_fingerprint(replace(req, image_refs=refs))


def test_fingerprint_of_a_spooled_upload_is_that_of_its_bytes() -> None:
    data = os.urandom(700_000)  # more than one chunk
    req = replace(_request(), images=[], mask=None, mask_ref=None)
    with Spooler() as spool:
        refs = [ImageRef(param="image[0]", data=spool(data)), req.image_refs[1]]
        spooled = request_fingerprint(replace(req, image_refs=refs))
    in_memory = [ImageRef(param="image[0]", data=data), req.image_refs[1]]
    assert spooled == request_fingerprint(replace(req, image_refs=in_memory))
