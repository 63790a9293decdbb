"""Large file parts go to the request's spool while they arrive; the request is the same.

The parser spools a file part from its first byte when the body's declared length is over
`limits.spool_threshold_bytes`, or as soon as the part grows past it (what was kept moves to the
file). Limits hold while spooling, image files are sniffed from their first bytes, and whatever
the threshold and the chunking, the parsed request is the same.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.api.body import parse_edit_body
from app.core.config import LimitsConfig
from app.core.errors import GatewayError
from app.domain.blob import SpooledBlob, blob_bytes
from app.domain.edit import EditRequest
from app.media.sniff import probe
from app.media.spool import Spool, SpoolWriter
from tests.api.test_body import MULTIPART, manual
from tests.support.images import png

PNG_HEAD = b"\x89PNG\r\n\x1a\n"
IMAGE = png(300, 300)  # a real PNG (a few KB)
BIG = PNG_HEAD + os.urandom(3000) + b"\r\n--" * 500  # binary, CRs and dashes inside


async def chunked(body: bytes, size: int, seen: list[int] | None = None) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        if seen is not None:
            seen.append(i)
        yield body[i : i + size]


async def parse(
    body: bytes,
    spool: Spool | None,
    *,
    threshold: int,
    declared: bool = True,
    chunk: int = 65536,
    seen: list[int] | None = None,
    **limits: Any,
) -> EditRequest:
    return await parse_edit_body(
        MULTIPART,
        chunked(body, chunk, seen),
        LimitsConfig(spool_threshold_bytes=threshold, **limits),
        default_model="gpt-image-1",
        spool=spool,
        declared=len(body) if declared else None,
    )


def body_with(*files: tuple[str, bytes], prompt: str = "blue") -> bytes:
    return manual([("prompt", prompt), *((name, data, "a.png") for name, data in files)])


def shape(req: EditRequest) -> list[Any]:
    """The request with every blob read back: what must not depend on spooling."""
    refs = [*req.image_refs, *([req.mask_ref] if req.mask_ref else [])]
    scalars = {k: v for k, v in req.__class__.__dataclass_fields__.items() if k != "image_refs"}
    return [
        [(r.param, blob_bytes(r.data) if r.data is not None else None, r.url) for r in refs],
        {k: getattr(req, k) for k in scalars if k not in ("mask_ref", "images", "mask")},
    ]


async def test_declared_large_body_spools_every_file_part(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        req = await parse(body_with(("image[]", BIG), ("mask", IMAGE)), spool, threshold=1000)
        assert spool.open_files == 2
        image, mask = req.image_refs[0].data, req.mask_ref.data if req.mask_ref else None
        assert isinstance(image, SpooledBlob) and image.read_all() == BIG
        assert isinstance(mask, SpooledBlob) and mask.read_all() == IMAGE
        assert req.prompt == "blue"  # text parts stay in memory


async def test_a_part_that_grows_past_the_threshold_moves_to_the_file(tmp_path: Path) -> None:
    body = body_with(("image[]", IMAGE), ("image[]", BIG))
    with Spool(tmp_path) as spool:
        req = await parse(body, spool, threshold=len(IMAGE), declared=False, chunk=7)
        small, big = (r.data for r in req.image_refs)
        assert type(small) is bytes and small == IMAGE  # not over the threshold
        assert isinstance(big, SpooledBlob) and big.read_all() == BIG
        assert spool.open_files == 1


async def test_small_bodies_stay_in_memory(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        req = await parse(body_with(("image", IMAGE)), spool, threshold=1024 * 1024)
        assert type(req.image_refs[0].data) is bytes and spool.open_files == 0
        # no spool at all: memory whatever the size
        req = await parse(body_with(("image", BIG)), None, threshold=0)
        assert req.image_refs[0].data == BIG


async def test_the_spooled_image_probes_like_the_bytes(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        req = await parse(body_with(("image", IMAGE)), spool, threshold=0)
        data = req.image_refs[0].data
        assert isinstance(data, SpooledBlob)
        assert probe(data.read_all(), param="image", max_pixels=10**8) == probe(
            IMAGE, param="image", max_pixels=10**8
        )


async def test_empty_file_is_refused_without_a_file(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool, pytest.raises(GatewayError) as err:
        await parse(body_with(("image", b"")), spool, threshold=0)
    assert (err.value.status, err.value.message) == (400, "image is an empty file")
    assert spool.open_files == 0


@pytest.mark.parametrize("declared", [True, False])
async def test_file_cap_is_a_413_one_chunk_past_it(tmp_path: Path, declared: bool) -> None:
    huge = PNG_HEAD + bytes(200_000)
    body = body_with(("image", huge))
    seen: list[int] = []
    spool = Spool(tmp_path)
    with pytest.raises(GatewayError) as err:
        await parse(
            body, spool, threshold=0, declared=declared, chunk=4096, seen=seen,
            max_image_bytes=50_000,
        )  # fmt: skip
    assert err.value.status == 413 and err.value.param == "image"
    assert "50000-byte limit per file" in err.value.message
    assert seen[-1] <= 50_000 + 4096 + 200  # read at most one chunk past the cap
    assert os.fstat(spool._fds[0]).st_size <= 50_000  # never written past it either
    spool.close()


@pytest.mark.parametrize("threshold", [0, 10])
async def test_a_non_image_is_refused_from_its_first_bytes(tmp_path: Path, threshold: int) -> None:
    gif = b"GIF89a" + bytes(500_000)
    seen: list[int] = []
    spool = Spool(tmp_path)
    with pytest.raises(GatewayError) as err:
        await parse(body_with(("image", gif)), spool, threshold=threshold, chunk=4096, seen=seen)
    with pytest.raises(GatewayError) as probed:  # the message the probe gives
        probe(gif, param="image", max_pixels=10**8)
    assert (err.value.status, err.value.message) == (400, probed.value.message)
    assert "GIF" in err.value.message
    assert len(seen) <= 2  # the rest was never read
    assert spool.open_files == 0  # refused before a file was made
    spool.close()


async def test_a_png_over_the_pixel_cap_is_refused_from_its_header(tmp_path: Path) -> None:
    bomb = png(400, 300) + bytes(300_000)
    seen: list[int] = []
    with Spool(tmp_path) as spool, pytest.raises(GatewayError) as err:
        await parse(
            body_with(("mask", bomb)), spool, threshold=0, chunk=4096, seen=seen,
            max_image_pixels=100_000,
        )  # fmt: skip
    assert err.value.status == 413 and err.value.param == "mask"
    assert "400x300 is 120,000 pixels" in err.value.message
    assert len(seen) <= 2


async def test_a_short_non_image_is_judged_at_the_end_of_its_part(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool, pytest.raises(GatewayError) as err:
        await parse(body_with(("image", b"hello")), spool, threshold=0)
    assert err.value.message == "image: not a PNG, JPEG or WEBP image"


# ---------------------------------------------------------------- equivalence (property)

_files = st.lists(
    st.tuples(
        st.sampled_from(["image[]", "mask"]),
        st.binary(min_size=1, max_size=2000).map(lambda b: PNG_HEAD + b),
    ),
    min_size=1,
    max_size=4,
).filter(lambda fs: sum(n == "mask" for n, _ in fs) <= 1 and any(n != "mask" for n, _ in fs))


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    files=_files,
    threshold=st.integers(0, 3000),
    chunk=st.sampled_from([3, 7, 64, 1000, 65536]),
    declared=st.booleans(),
)
async def test_spooling_never_changes_the_request(
    tmp_path: Path, files: list[tuple[str, bytes]], threshold: int, chunk: int, declared: bool
) -> None:
    body = body_with(*files, prompt="the same\r\n--prompt")
    reference = await parse(body, None, threshold=threshold)
    with Spool(tmp_path) as spool:
        spooled = await parse(body, spool, threshold=threshold, chunk=chunk, declared=declared)
        assert shape(spooled) == shape(reference)
        expect_files = sum(
            len(data) > threshold or (declared and len(body) > threshold) for _, data in files
        )
        assert spool.open_files == expect_files
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- no copies on the way to disk


@pytest.mark.parametrize("declared", [True, False])
async def test_spooled_bytes_are_written_from_the_received_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, declared: bool
) -> None:
    """A spooled part's bytes go to the file as memoryviews of the chunks the route received
    (no slice copy, no join); only the parser's own look-behind (a possible delimiter start
    carried over a chunk edge, shorter than the delimiter) arrives as a small bytes object."""
    big = PNG_HEAD + os.urandom(300_000) + b"\r\n--" * 2000
    body = body_with(("image", big))
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    written: list[bytes | bytearray | memoryview] = []
    real_write = SpoolWriter.write

    def spy(self: SpoolWriter, data: bytes | bytearray | memoryview) -> None:
        written.append(data)
        real_write(self, data)

    monkeypatch.setattr(SpoolWriter, "write", spy)

    async def stream() -> AsyncIterator[bytes]:
        for c in chunks:
            yield c

    with Spool(tmp_path) as spool:
        req = await parse_edit_body(
            MULTIPART,
            stream(),
            LimitsConfig(spool_threshold_bytes=100_000),
            default_model="gpt-image-1",
            spool=spool,
            declared=len(body) if declared else None,
        )
        data = req.image_refs[0].data
        assert isinstance(data, SpooledBlob) and data.read_all() == big
    views = [w for w in written if type(w) is memoryview]
    assert all(any(v.obj is c for c in chunks) for v in views)
    assert all(len(w) < 100 for w in written if type(w) is not memoryview)
    assert sum(len(v) for v in views) > len(big) - 1000
