"""Large fetched and `data:` URL images go to the request's spool as they arrive, are probed
through a mapping that is closed afterwards, and the long data URL string is dropped."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from app.core.config import LimitsConfig
from app.core.errors import GatewayError
from app.domain.blob import SpooledBlob
from app.domain.edit import EditRequest, ImageRef
from app.media import GuardedFetcher, resolve_images
from app.media.fetch import decode_data_url
from app.media.spool import Spool
from app.tasks.payload import request_fingerprint
from tests.support.images import png
from tests.support.net import ThreadedServer, serve

BIG = png(900, 700)  # a real PNG, well over the thresholds below
LIMITS = LimitsConfig(spool_threshold_bytes=4096)


async def declared(request: Request) -> Response:
    return Response(BIG, media_type="image/png")


async def chunked(request: Request) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(BIG), 1000):
            yield BIG[i : i + 1000]

    return StreamingResponse(body(), media_type="image/png")


app = Starlette(routes=[Route("/declared", declared), Route("/chunked", chunked)])


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with serve(app) as srv:
        yield srv


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    with Spool(tmp_path) as s:
        yield s


def _data_url(data: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(data).decode()}"


def _request(*refs: ImageRef) -> EditRequest:
    return EditRequest(model="m", prompt="p", image_refs=list(refs), body_kind="json")


def _mapped_by_us() -> int:
    """Mappings of deleted spool files in this process (a closed mapping is gone)."""
    with open("/proc/self/maps") as f:
        return sum("(deleted)" in line or "/#" in line for line in f)


@pytest.mark.parametrize("path", ["/declared", "/chunked"])
async def test_a_large_fetched_image_is_spooled(
    server: ThreadedServer, fetcher: GuardedFetcher, spool: Spool, path: str
) -> None:
    mapped = _mapped_by_us()
    req = _request(ImageRef("image", url=server.url + path))
    await resolve_images(req, fetcher, LIMITS, spool)
    (image,) = req.images
    assert isinstance(image.data, SpooledBlob) and image.data.read_all() == BIG
    assert (image.width, image.height, image.mime) == (900, 700, "image/png")
    assert req.image_refs[0].url == server.url + path  # http(s) URLs stay as given
    assert spool.open_files == 1
    assert _mapped_by_us() == mapped  # the probe's mapping is closed


async def test_a_fetched_image_over_the_cap_is_a_413(
    server: ThreadedServer, fetcher: GuardedFetcher, spool: Spool
) -> None:
    for path in ("/declared", "/chunked"):
        with pytest.raises(GatewayError) as err:
            await fetcher.fetch(
                server.url + path, param="image", max_bytes=len(BIG) - 1,
                spool=spool, spool_threshold=0,
            )  # fmt: skip
        assert err.value.status == 413


async def test_a_large_data_url_is_decoded_into_the_spool_and_dropped(
    fetcher: GuardedFetcher, spool: Spool
) -> None:
    url = _data_url(BIG)
    req = _request(ImageRef("image", url=url))
    fingerprint_before = request_fingerprint(_request(ImageRef("image", data=BIG)))
    await resolve_images(req, fetcher, LIMITS, spool)
    ref = req.image_refs[0]
    assert isinstance(ref.data, SpooledBlob) and ref.data.read_all() == BIG
    assert ref.url == "data:image/png;base64,..."  # the header only, not the payload
    assert req.images[0].data is ref.data
    # The fingerprint hashes the image bytes, as for an upload: the same request, the same one.
    assert request_fingerprint(req) == fingerprint_before
    again = _request(ImageRef("image", url=url))
    await resolve_images(again, fetcher, LIMITS, spool)
    assert request_fingerprint(again) == request_fingerprint(req)


@pytest.mark.parametrize("step_chars", [4, 8, 1 << 20])
def test_chunked_data_url_decoding_is_the_same_as_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step_chars: int
) -> None:
    import app.media.fetch as fetch

    monkeypatch.setattr(fetch, "_B64_STEP", step_chars)
    data = os.urandom(10_001)
    b64 = base64.b64encode(data).decode()
    with Spool(tmp_path) as spool:
        for url in (f"data:image/png;base64,{b64}", f"data:image/png;base64,{b64.rstrip('=')}"):
            blob = decode_data_url(url, param="i", max_bytes=10**6, spool=spool)
            assert isinstance(blob, SpooledBlob) and blob.read_all() == data
        for broken in (b64[:100] + "==" + b64[100:], b64[:-8] + "!!!!" + b64[-4:]):
            with pytest.raises(GatewayError) as err:
                decode_data_url(f"data:image/png;base64,{broken}", param="i", max_bytes=10**6,
                                spool=spool)  # fmt: skip
            assert err.value.message == "i: the data URL is not valid base64"


async def test_a_corrupt_spooled_png_is_a_400_and_unmapped(
    fetcher: GuardedFetcher, spool: Spool
) -> None:
    mapped = _mapped_by_us()
    broken = BIG[:-20] + bytes(20)  # the IEND chunk is gone
    req = _request(ImageRef("image", url=_data_url(broken)))
    with pytest.raises(GatewayError) as err:
        await resolve_images(req, fetcher, LIMITS, spool)
    assert err.value.message == "image: truncated or corrupt PNG"
    assert _mapped_by_us() == mapped


async def test_without_a_spool_everything_stays_in_memory(fetcher: GuardedFetcher) -> None:
    req = _request(ImageRef("image", url=_data_url(BIG)))
    await resolve_images(req, fetcher, LimitsConfig(spool_threshold_bytes=0))
    assert type(req.images[0].data) is bytes and req.images[0].data == BIG
