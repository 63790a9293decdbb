"""`resolve_images`: every kind of image reference into sniffed images, in order."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.core.config import LimitsConfig
from app.core.errors import GatewayError
from app.domain.edit import EditRequest, ImageRef
from app.media import GuardedFetcher, resolve_images
from tests.media import encode
from tests.support.net import ThreadedServer, serve

PNG = encode("RGBA", "PNG", size=(20, 10))
JPEG = encode("RGB", "JPEG", size=(30, 15))
WEBP = encode("RGB", "WEBP", size=(40, 20))
MASK = encode("LA", "PNG", size=(20, 10))
FILES = {"a.png": PNG, "b.jpg": JPEG, "c.webp": WEBP, "text.png": b"just text, not a PNG"}


async def files(request: Request) -> Response:
    return Response(FILES[request.path_params["name"]], media_type="image/png")


async def slow(request: Request) -> Response:
    await asyncio.sleep(1)
    return Response(PNG)


app = Starlette(routes=[Route("/f/{name}", files), Route("/slow", slow)])


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with serve(app) as srv:
        yield srv


def _request(refs: list[ImageRef], mask: ImageRef | None = None) -> EditRequest:
    return EditRequest(
        model="gpt-image-1.5", prompt="p", image_refs=refs, body_kind="json", mask_ref=mask
    )


def _data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


LIMITS = LimitsConfig()


async def test_every_kind_in_order(server: ThreadedServer, fetcher: GuardedFetcher) -> None:
    req = _request(
        [
            ImageRef("image[0]", data=JPEG),
            ImageRef("image[1]", url=f"{server.url}/f/c.webp"),
            ImageRef("image[2]", url=_data_url(PNG, "image/jpeg")),  # declared type is ignored
            ImageRef("image[3]", url=f"{server.url}/f/a.png"),
        ],
        mask=ImageRef("mask", url=_data_url(MASK)),
    )
    await resolve_images(req, fetcher, LIMITS)
    assert [(i.mime, i.width, i.height) for i in req.images] == [
        ("image/jpeg", 30, 15),
        ("image/webp", 40, 20),
        ("image/png", 20, 10),
        ("image/png", 20, 10),
    ]
    assert req.images[3].data == PNG and req.images[3].has_alpha
    assert req.mask is not None and req.mask.mime == "image/png" and req.mask.has_alpha


async def test_mask_is_resolved_not_judged(fetcher: GuardedFetcher) -> None:
    """Whether a JPEG mask is allowed is the model's rule (its adapter's check_mask)."""
    req = _request([ImageRef("image", data=PNG)], mask=ImageRef("mask", data=JPEG))
    await resolve_images(req, fetcher, LIMITS)
    assert req.mask is not None and req.mask.mime == "image/jpeg"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("file:///etc/passwd", "scheme 'file'"),
        ("ftp://x/", "scheme 'ftp'"),
        ("/etc/passwd", "scheme (none)"),
        ("javascript:alert(1)", "scheme 'javascript'"),
    ],
)
async def test_other_schemes_refused(url: str, fragment: str, fetcher: GuardedFetcher) -> None:
    req = _request([ImageRef("image[0]", data=PNG), ImageRef("image[1]", url=url)])
    with pytest.raises(GatewayError) as info:
        await resolve_images(req, fetcher, LIMITS)
    assert (info.value.status, info.value.param) == (400, "image[1]")
    assert fragment in info.value.message


async def test_text_at_a_url_is_not_an_image(server, fetcher) -> None:
    req = _request([ImageRef("image[0]", url=f"{server.url}/f/text.png")])
    with pytest.raises(GatewayError) as info:
        await resolve_images(req, fetcher, LIMITS)
    assert info.value.message == "image[0]: not a PNG, JPEG or WEBP image"


async def test_guard_applies_to_image_urls(server) -> None:
    guarded = GuardedFetcher(allow_private=False)
    try:
        req = _request([ImageRef("image", url=f"{server.url}/f/a.png")])
        with pytest.raises(GatewayError) as info:
            await resolve_images(req, guarded, LIMITS)
        assert info.value.message == "image: URL not allowed: 127.0.0.1 is a loopback address"
    finally:
        await guarded.aclose()


async def test_limits(fetcher: GuardedFetcher) -> None:
    limits = LimitsConfig(max_images=2, max_image_bytes=1024, max_image_pixels=150)
    big = _request([ImageRef("image", data=PNG + b"\x00" * 2000)])
    with pytest.raises(GatewayError) as info:
        await resolve_images(big, fetcher, limits)
    assert info.value.status == 413

    big_data_url = _request([ImageRef("image", url=_data_url(b"\x00" * 2000))])
    with pytest.raises(GatewayError) as info:
        await resolve_images(big_data_url, fetcher, limits)
    assert info.value.status == 413

    many_pixels = _request([ImageRef("image", data=PNG)])  # 20x10 = 200 > 150
    with pytest.raises(GatewayError) as info:
        await resolve_images(many_pixels, fetcher, limits)
    assert info.value.status == 413 and "20x10" in info.value.message


async def test_first_failure_cancels_the_rest(server, fetcher) -> None:
    req = _request(
        [
            ImageRef("image[0]", url=f"{server.url}/slow"),
            ImageRef("image[1]", url="ftp://nope/"),
        ]
    )
    with pytest.raises(GatewayError) as info:
        # The slow fetch (1 s) is cancelled rather than awaited.
        await asyncio.wait_for(resolve_images(req, fetcher, LIMITS), timeout=0.8)
    assert info.value.param == "image[1]"


async def test_large_upload_probed_off_loop(fetcher) -> None:
    big = encode("RGB", "PNG", size=(1200, 1200), compress_level=0)  # > 1 MiB: thread path
    req = _request([ImageRef("image", data=big)])
    await resolve_images(req, fetcher, LIMITS)
    assert (req.images[0].width, req.images[0].height) == (1200, 1200)


async def test_no_images_no_mask(fetcher) -> None:
    req = _request([])
    await resolve_images(req, fetcher, LIMITS)
    assert req.images == [] and req.mask is None
