"""`GuardedFetcher` against a real HTTP server on 127.0.0.1.

Names that look public (`public.test` → 93.184.216.34) are answered by injected resolvers, and
the network backend under the pin records the address it was asked to connect to, then always
connects to 127.0.0.1 instead: no traffic ever leaves the loopback interface.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpcore
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from app.core.errors import GatewayError
from app.media.fetch import FetchError, GuardedFetcher
from tests.media import PUBLIC_IP, LoopbackBackend, encode
from tests.support.net import ThreadedServer, free_port, serve

PNG = encode("RGBA", "PNG", size=(32, 16))


# ---------------------------------------------------------------- the local server

hooks: list[tuple[bytes, dict[str, str]]] = []


async def img(request: Request) -> Response:
    return Response(PNG, media_type="image/png")


async def hops(request: Request) -> Response:
    n = int(request.path_params["n"])
    return RedirectResponse(f"/hops/{n - 1}" if n else "/img.png", status_code=302)


async def redirect(request: Request) -> Response:
    return RedirectResponse(request.query_params["to"], status_code=307)


async def no_location(request: Request) -> Response:
    return Response(status_code=302)


async def status(request: Request) -> Response:
    return Response(b"nope", status_code=int(request.path_params["code"]))


async def stream(request: Request) -> Response:
    chunks, size = int(request.query_params["chunks"]), int(request.query_params["size"])

    async def body() -> AsyncIterator[bytes]:
        for _ in range(chunks):
            yield b"x" * size
            await asyncio.sleep(0)

    return StreamingResponse(body(), media_type="application/octet-stream")


async def sized(request: Request) -> Response:
    return Response(b"y" * int(request.query_params["n"]))


async def slow(request: Request) -> Response:
    await asyncio.sleep(1)
    return Response(PNG)


async def host(request: Request) -> Response:
    return Response(request.headers["host"].encode())


async def gzip(request: Request) -> Response:
    return Response(b"\x1f\x8b" + b"\x00" * 20, headers={"content-encoding": "gzip"})


async def hook(request: Request) -> Response:
    hooks.append((await request.body(), dict(request.headers)))
    return Response(status_code=204)


async def hook_redirect(request: Request) -> Response:
    return RedirectResponse("/hook", status_code=302)


async def hook_slow(request: Request) -> Response:
    await asyncio.sleep(1)
    return Response(status_code=200)


app = Starlette(
    routes=[
        Route("/img.png", img),
        Route("/hops/{n:int}", hops),
        Route("/redirect", redirect),
        Route("/no-location", no_location),
        Route("/status/{code:int}", status),
        Route("/stream", stream),
        Route("/sized", sized),
        Route("/slow", slow),
        Route("/host", host),
        Route("/gzip", gzip),
        Route("/hook", hook, methods=["POST"]),
        Route("/hook-redirect", hook_redirect, methods=["POST"]),
        Route("/hook-slow", hook_slow, methods=["POST"]),
    ]
)


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with serve(app) as srv:
        yield srv


@pytest.fixture
async def backend() -> LoopbackBackend:
    return LoopbackBackend()


@pytest.fixture
async def local(backend: LoopbackBackend) -> AsyncIterator[GuardedFetcher]:
    """allow_private=True: the plain happy path against 127.0.0.1."""
    fetcher = GuardedFetcher(allow_private=True, network_backend=backend, timeout_s=5)
    yield fetcher
    await fetcher.aclose()


def public_resolver(answers: dict[str, str]):
    calls: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return [answers[host]]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


@pytest.fixture
async def guarded(backend: LoopbackBackend) -> AsyncIterator[GuardedFetcher]:
    """allow_private=False, with `public.test` resolving to a public address."""
    resolver = public_resolver({"public.test": PUBLIC_IP, "intranet.test": "10.9.8.7"})
    fetcher = GuardedFetcher(
        allow_private=False, resolver=resolver, network_backend=backend, timeout_s=5
    )
    yield fetcher
    await fetcher.aclose()


async def _error(coro) -> GatewayError:  # type: ignore[no-untyped-def]
    with pytest.raises(GatewayError) as info:
        await coro
    return info.value


# ---------------------------------------------------------------- GET


async def test_fetch_image(server: ThreadedServer, local: GuardedFetcher, backend) -> None:
    data = await local.fetch(f"{server.url}/img.png", param="image", max_bytes=1_000_000)
    assert data == PNG
    assert backend.connects == [("127.0.0.1", server.port)]


async def test_keep_alive_reuses_one_connection(server, local, backend) -> None:
    for _ in range(3):
        await local.fetch(f"{server.url}/img.png", param="image", max_bytes=1_000_000)
    assert len(backend.connects) == 1


async def test_redirects_up_to_the_limit(server, local) -> None:
    data = await local.fetch(f"{server.url}/hops/2", param="image", max_bytes=1_000_000)
    assert data == PNG  # 3 redirects: /hops/2 -> /hops/1 -> /hops/0 -> /img.png
    err = await _error(local.fetch(f"{server.url}/hops/3", param="image", max_bytes=1_000_000))
    assert (err.status, err.param) == (400, "image")
    assert "too many redirects (more than 3)" in err.message


async def test_redirect_without_location(server, local) -> None:
    err = await _error(local.fetch(f"{server.url}/no-location", param="image", max_bytes=100))
    assert "302 without a Location" in err.message


async def test_non_2xx_names_param_and_status(server, local) -> None:
    err = await _error(local.fetch(f"{server.url}/status/404", param="image[3]", max_bytes=100))
    assert (err.code, err.status, err.param) == ("bad_request", 400, "image[3]")
    assert err.message == "image[3]: fetching the URL failed: HTTP 404"


async def test_size_cap_while_streaming(server, local) -> None:
    url = f"{server.url}/stream?chunks=64&size=65536"  # 4 MB, no Content-Length
    err = await _error(local.fetch(url, param="image", max_bytes=100_000))
    assert (err.code, err.status) == ("payload_too_large", 413)
    data = await local.fetch(
        f"{server.url}/stream?chunks=2&size=1000", param="image", max_bytes=2000
    )
    assert len(data) == 2000  # exactly at the cap is fine


async def test_declared_length_over_cap(server, local) -> None:
    err = await _error(local.fetch(f"{server.url}/sized?n=200000", param="image", max_bytes=1000))
    assert err.status == 413 and "200,000 bytes" in err.message


async def test_content_encoding_refused(server, local) -> None:
    err = await _error(local.fetch(f"{server.url}/gzip", param="image", max_bytes=1000))
    assert "Content-Encoding 'gzip'" in err.message


async def test_total_timeout(server, backend) -> None:
    fetcher = GuardedFetcher(allow_private=True, network_backend=backend, timeout_s=0.3)
    try:
        err = await _error(fetcher.fetch(f"{server.url}/slow", param="image", max_bytes=10**6))
        assert err.status == 400 and "timed out after 0.3s" in err.message
    finally:
        await fetcher.aclose()


async def test_connection_refused(local) -> None:
    url = f"http://127.0.0.1:{free_port()}/img.png"
    err = await _error(local.fetch(url, param="image", max_bytes=1000))
    assert err.status == 400 and "fetching the URL failed" in err.message


# ---------------------------------------------------------------- the guard on


async def test_public_name_is_pinned_and_host_kept(server, guarded, backend) -> None:
    url = f"http://public.test:{server.port}/host"
    assert await guarded.fetch(url, param="image", max_bytes=1000) == (
        f"public.test:{server.port}".encode()
    )
    assert backend.connects == [(PUBLIC_IP, server.port)]


async def test_redirect_to_private_address_is_rechecked(server, guarded, backend) -> None:
    base = f"http://public.test:{server.port}"
    targets = {
        f"http://127.0.0.1:{server.port}/img.png": "127.0.0.1 is a loopback address",
        f"http://2130706433:{server.port}/img.png": "a loopback address",
        "http://169.254.169.254/latest/meta-data/": "cloud metadata address",
        f"http://intranet.test:{server.port}/img.png": "intranet.test resolves to 10.9.8.7",
        "file:///etc/passwd": "scheme 'file'",
    }
    for to, fragment in targets.items():
        err = await _error(
            guarded.fetch(f"{base}/redirect?to={to}", param="image[1]", max_bytes=10**6)
        )
        assert fragment in err.message and err.param == "image[1]", err.message
    # Only the allowed first hops were ever connected (to the checked public address).
    assert {addr for addr, _ in backend.connects} == {PUBLIC_IP}


async def test_dns_rebinding_uses_the_checked_address(server, backend) -> None:
    answers = iter([[PUBLIC_IP], ["127.0.0.1"], ["127.0.0.1"]])
    calls: list[str] = []

    async def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return next(answers)

    fetcher = GuardedFetcher(allow_private=False, resolver=rebinding, network_backend=backend)
    try:
        data = await fetcher.fetch(
            f"http://rebind.test:{server.port}/img.png", param="image", max_bytes=10**6
        )
        assert data == PNG
        # One lookup, and the connection went to its (checked) answer, not a second lookup's.
        assert calls == ["rebind.test"]
        assert backend.connects == [(PUBLIC_IP, server.port)]
        # A redirect back to the same name is resolved and checked again: now it is refused.
        err = await _error(
            fetcher.fetch(
                f"http://rebind.test:{server.port}/redirect?to=/img.png",
                param="image",
                max_bytes=10**6,
            )
        )
        assert "rebind.test resolves to 127.0.0.1, a loopback address" in err.message
    finally:
        await fetcher.aclose()


# ---------------------------------------------------------------- POST (webhooks)


async def test_post_delivers_and_returns_status(server, local) -> None:
    hooks.clear()
    status_code = await local.post(
        f"{server.url}/hook",
        body=b'{"ok": true}',
        headers={"Content-Type": "application/json", "X-Imagegate-Signature": "t=1,v1=ab"},
        timeout_s=5,
    )
    assert status_code == 204
    body, headers = hooks[-1]
    assert body == b'{"ok": true}'
    assert headers["x-imagegate-signature"] == "t=1,v1=ab"
    assert headers["content-type"] == "application/json"


async def test_post_does_not_follow_redirects(server, local) -> None:
    hooks.clear()
    assert (
        await local.post(f"{server.url}/hook-redirect", body=b"{}", headers={}, timeout_s=5) == 302
    )
    assert hooks == []


async def test_post_failures_raise_fetch_error(server, local) -> None:
    with pytest.raises(FetchError):
        await local.post(f"http://127.0.0.1:{free_port()}/", body=b"{}", headers={}, timeout_s=2)
    with pytest.raises(FetchError, match="timed out"):
        await local.post(f"{server.url}/hook-slow", body=b"{}", headers={}, timeout_s=0.3)


async def test_post_is_guarded_and_pinned(server, guarded, backend) -> None:
    err = await _error(
        guarded.post(f"http://127.0.0.1:{server.port}/hook", body=b"{}", headers={}, timeout_s=2)
    )
    assert err.param == "callback_url" and "loopback" in err.message
    assert backend.connects == []
    code = await guarded.post(
        f"http://public.test:{server.port}/hook", body=b"{}", headers={}, timeout_s=2
    )
    assert code == 204 and backend.connects == [(PUBLIC_IP, server.port)]


async def test_post_unresolvable_host_is_retryable(server) -> None:
    async def nxdomain(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    fetcher = GuardedFetcher(allow_private=False, resolver=nxdomain)
    try:
        with pytest.raises(FetchError, match="could not resolve"):
            await fetcher.post("http://gone.test/hook", body=b"{}", headers={}, timeout_s=2)
    finally:
        await fetcher.aclose()


async def test_falls_back_to_the_next_checked_address(server) -> None:
    class FirstAddressDown(LoopbackBackend):
        async def connect_tcp(self, host: str, port: int, *args: Any, **kw: Any) -> Any:
            if host == "2606:4700::1":
                self.connects.append((host, port))
                raise httpcore.ConnectError("network unreachable")
            return await super().connect_tcp(host, port, *args, **kw)

    async def dual_stack(host: str, port: int) -> list[str]:
        return ["2606:4700::1", PUBLIC_IP]

    backend = FirstAddressDown()
    fetcher = GuardedFetcher(allow_private=False, resolver=dual_stack, network_backend=backend)
    try:
        url = f"http://dual.test:{server.port}/img.png"
        assert await fetcher.fetch(url, param="image", max_bytes=10**6) == PNG
        assert backend.connects == [("2606:4700::1", server.port), (PUBLIC_IP, server.port)]
    finally:
        await fetcher.aclose()
