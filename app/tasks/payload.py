"""The bytes a queued task carries: an `EditRequest` with its images, in a compact framing.

Inputs can be tens of MB, so images are never base64'd into JSON (a third bigger, and slow to
encode and parse). The frame is

    b"IGT1" | u32 big-endian header length | header (JSON) | blob 0 | blob 1 | ...

where the header holds every scalar field plus, for each image, its metadata and blob length,
and the blobs are the raw bytes in header order. `frame_request` returns the frame as pieces
(the header bytes, then each image's `Blob` by reference) for object storage to write, a spooled
image straight from its file (`ObjectStorage.put_pieces`); `encode_request` joins them into one
buffer where the bytes must be in memory (a payload queued inline). Decoding slices a
memoryview, copying each image once into its `bytes`.

`meta` is a free dict stored beside the request for what the handler needs and the request
does not say (price tier, reserved amount, the public base URL, ...).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import fields
from typing import Any

import orjson

from app.domain.blob import Blob, SpooledBlob
from app.domain.edit import EditRequest, Image, ImageRef

MAGIC = b"IGT1"
_LEN = struct.Struct(">I")
_SKIP = {"image_refs", "mask_ref", "images", "mask"}
_SCALARS = tuple(f.name for f in fields(EditRequest) if f.name not in _SKIP)


class PayloadError(ValueError):
    """The bytes are not a task payload this version can read."""


def _image_meta(img: Image, blobs: list[Blob]) -> dict[str, Any]:
    blobs.append(img.data)
    return {
        "mime": img.mime,
        "width": img.width,
        "height": img.height,
        "has_alpha": img.has_alpha,
        "len": len(img.data),
    }


def _ref_meta(ref: ImageRef, blobs: list[Blob], keep_data: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"param": ref.param, "url": ref.url, "len": None}
    if keep_data and ref.data is not None:
        blobs.append(ref.data)
        out["len"] = len(ref.data)
    return out


def frame_request(
    req: EditRequest, *, meta: dict[str, Any] | None = None, keep_ref_data: bool | None = None
) -> list[Blob]:
    """Frame `req` (and `meta`) for storage with its task: the header, then the images by
    reference (a spooled one stays in its file).

    Uploaded bytes in `image_refs` duplicate `images` once those are resolved, so by default
    they are kept only while `images` is still empty (`keep_ref_data=None`); pass True/False
    to decide explicitly. URLs and params of the refs are always kept.
    """
    keep = (not req.images and req.mask is None) if keep_ref_data is None else keep_ref_data
    blobs: list[Blob] = []
    header: dict[str, Any] = {
        "v": 1,
        "fields": {name: getattr(req, name) for name in _SCALARS},
        "image_refs": [_ref_meta(r, blobs, keep) for r in req.image_refs],
        "mask_ref": _ref_meta(req.mask_ref, blobs, keep) if req.mask_ref else None,
        "images": [_image_meta(img, blobs) for img in req.images],
        "mask": _image_meta(req.mask, blobs) if req.mask else None,
        "meta": meta or {},
    }
    head = orjson.dumps(header)
    return [MAGIC + _LEN.pack(len(head)) + head, *blobs]


def join_frame(frame: list[Blob]) -> bytes:
    """A frame as one buffer, spooled images read whole: only where the payload must be in
    memory (a task queued inline, tests)."""
    return b"".join(b if isinstance(b, bytes) else b.read_all() for b in frame)


def encode_request(
    req: EditRequest, *, meta: dict[str, Any] | None = None, keep_ref_data: bool | None = None
) -> bytes:
    """`frame_request` joined into one buffer."""
    return join_frame(frame_request(req, meta=meta, keep_ref_data=keep_ref_data))


class _Reader:
    def __init__(self, view: memoryview, offset: int) -> None:
        self.view = view
        self.offset = offset

    def take(self, n: int) -> bytes:
        end = self.offset + n
        if end > len(self.view):
            raise PayloadError("task payload is truncated")
        out = bytes(self.view[self.offset : end])
        self.offset = end
        return out

    def image(self, m: dict[str, Any]) -> Image:
        return Image(
            data=self.take(m["len"]),
            mime=m["mime"],
            width=m["width"],
            height=m["height"],
            has_alpha=m["has_alpha"],
        )

    def ref(self, m: dict[str, Any]) -> ImageRef:
        data = self.take(m["len"]) if m["len"] is not None else None
        return ImageRef(param=m["param"], data=data, url=m["url"])


def decode_request(data: bytes) -> tuple[EditRequest, dict[str, Any]]:
    """The `EditRequest` and `meta` that `encode_request` framed."""
    view = memoryview(data)
    if len(view) < 8 or bytes(view[:4]) != MAGIC:
        raise PayloadError("not a task payload")
    (head_len,) = _LEN.unpack_from(view, 4)
    if 8 + head_len > len(view):
        raise PayloadError("task payload is truncated")
    header = orjson.loads(view[8 : 8 + head_len])
    reader = _Reader(view, 8 + head_len)
    # Blobs were written in this order: refs, mask ref, images, mask.
    image_refs = [reader.ref(m) for m in header["image_refs"]]
    mask_ref = reader.ref(header["mask_ref"]) if header["mask_ref"] else None
    images = [reader.image(m) for m in header["images"]]
    mask = reader.image(header["mask"]) if header["mask"] else None
    if reader.offset != len(view):
        raise PayloadError("task payload has trailing bytes")
    req = EditRequest(
        **header["fields"], image_refs=image_refs, mask_ref=mask_ref, images=images, mask=mask
    )
    return req, header["meta"]


def request_fingerprint(req: EditRequest) -> str:
    """A digest of what the client asked for, for `Idempotency-Key` reuse checks (409).

    Computed from the fields and the image inputs as given (upload bytes or URLs), so it can
    be taken before anything is fetched, and is independent of multipart boundaries.
    """
    h = hashlib.sha256()
    h.update(
        orjson.dumps({name: getattr(req, name) for name in _SCALARS}, option=orjson.OPT_SORT_KEYS)
    )
    refs = [*req.image_refs, *([req.mask_ref] if req.mask_ref else [])]
    for ref in refs:
        h.update(b"\x00ref:" + ref.param.encode() + b"\x00")
        if ref.data is not None:
            h.update(_sha256(ref.data))
        else:
            h.update(b"url:" + (ref.url or "").encode())
    return h.hexdigest()


def _sha256(blob: Blob) -> bytes:
    """The digest of an image, a spooled one hashed chunk by chunk from its file."""
    if not isinstance(blob, SpooledBlob):
        return hashlib.sha256(blob).digest()
    h = hashlib.sha256()
    for chunk in blob.chunks():
        h.update(chunk)
    return h.digest()
