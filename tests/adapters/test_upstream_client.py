"""UpstreamClient: auth headers, retries (what is retried and what never is), timeouts, SSE."""

from __future__ import annotations

import time

import httpx
import pytest

from app.core.config import GatewayConfig
from app.core.errors import GatewayError
from app.upstream.client import UpstreamClient, build_clients, parse_retry_after
from tests.adapters import (
    GEMINI_KEY,
    OPENAI_KEY,
    client_with,
    json_response,
    model_config,
    upstream_config,
)
from tests.support.net import free_port


async def test_openai_auth_header_and_url() -> None:
    client, rec = client_with([json_response({"ok": True})])
    resp = await client.request("POST", "/images/edits", content=b"x")
    assert resp.status == 200 and resp.json() == {"ok": True}
    assert str(rec.last.url) == "http://upstream.test/v1/images/edits"
    assert rec.last.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert "x-goog-api-key" not in rec.last.headers
    await client.aclose()


async def test_gemini_auth_header_and_json_body() -> None:
    client, rec = client_with([json_response({})], kind="gemini")
    await client.request("POST", "/models/m:generateContent", json={"a": [1, "b"]})
    assert str(rec.last.url) == "http://upstream.test/v1beta/models/m:generateContent"
    assert rec.last.headers["x-goog-api-key"] == GEMINI_KEY
    assert "authorization" not in rec.last.headers
    assert rec.last.headers["content-type"] == "application/json"
    assert rec.last.content == b'{"a":[1,"b"]}'
    await client.aclose()


async def test_caller_cannot_override_credential_and_repr_hides_key() -> None:
    client, rec = client_with([json_response({})])
    await client.request("GET", "/x", headers={"Authorization": "Bearer other"})
    assert rec.last.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert OPENAI_KEY not in repr(client)
    assert client.redact(f"bad key {OPENAI_KEY}!") == "bad key ***!"
    await client.aclose()


async def test_no_key_sends_no_auth_header() -> None:
    client, rec = client_with([json_response({})], api_key="")
    await client.request("GET", "/x")
    assert "authorization" not in rec.last.headers
    await client.aclose()


async def test_500_then_200_retries_once() -> None:
    client, rec = client_with([json_response({}, 500), json_response({"ok": 1})])
    resp = await client.request("POST", "/x", content=b"body")
    assert resp.status == 200 and resp.attempts == 2
    assert len(rec.requests) == 2
    assert rec.requests[1].content == b"body"  # the same body is sent again
    await client.aclose()


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
async def test_other_4xx_never_retried(status: int) -> None:
    client, rec = client_with([json_response({}, status), json_response({})])
    resp = await client.request("POST", "/x")
    assert resp.status == status
    assert len(rec.requests) == 1
    await client.aclose()


async def test_5xx_after_all_retries_is_returned() -> None:
    client, rec = client_with([json_response({"error": {}}, 503)], retries=3)
    resp = await client.request("POST", "/x")
    assert resp.status == 503 and resp.attempts == 4
    assert len(rec.requests) == 4
    await client.aclose()


async def test_zero_retries_means_one_attempt() -> None:
    client, rec = client_with([json_response({}, 500)], retries=0)
    assert (await client.request("POST", "/x")).status == 500
    assert len(rec.requests) == 1
    await client.aclose()


async def test_x_should_retry_false_is_respected() -> None:
    client, rec = client_with([json_response({}, 500, {"x-should-retry": "false"})])
    assert (await client.request("POST", "/x")).status == 500
    assert len(rec.requests) == 1
    await client.aclose()


async def test_retry_after_ms_is_honoured() -> None:
    client, _rec = client_with(
        [json_response({}, 429, {"retry-after-ms": "250"}), json_response({})]
    )
    start = time.monotonic()
    resp = await client.request("POST", "/x")
    assert resp.status == 200
    assert time.monotonic() - start >= 0.24  # backoff_s is 0.001: only the header explains this
    await client.aclose()


async def test_retry_after_seconds_is_honoured_and_capped() -> None:
    client, _rec = client_with([json_response({}, 429, {"retry-after": "1"}), json_response({})])
    client.RETRY_AFTER_CAP_S = 0.3  # type: ignore[misc]
    start = time.monotonic()
    assert (await client.request("POST", "/x")).status == 200
    assert 0.29 <= time.monotonic() - start < 0.9
    await client.aclose()


async def test_429_after_retries_returned_with_header() -> None:
    client, rec = client_with([json_response({}, 429, {"retry-after": "0"})], retries=1)
    resp = await client.request("POST", "/x")
    assert resp.status == 429 and resp.retry_after() == 0
    assert len(rec.requests) == 2
    await client.aclose()


async def test_timeouts_become_504_after_retries() -> None:
    client, rec = client_with([httpx.ReadTimeout("slow")], retries=2)
    with pytest.raises(GatewayError) as ei:
        await client.request("POST", "/x")
    assert ei.value.code == "upstream_timeout" and ei.value.status == 504
    assert len(rec.requests) == 3
    await client.aclose()


async def test_timeout_then_success() -> None:
    client, _rec = client_with([httpx.ConnectTimeout("slow"), json_response({"ok": 1})])
    assert (await client.request("POST", "/x")).status == 200
    await client.aclose()


async def test_connection_refused_on_a_closed_port_is_502() -> None:
    port = free_port()  # bound then released: nothing listens there
    cfg = upstream_config(base_url=f"http://127.0.0.1:{port}/v1", retries=1)
    client = UpstreamClient("openai", cfg)
    with pytest.raises(GatewayError) as ei:
        await client.request("POST", "/images/edits", content=b"x")
    assert ei.value.code == "api_error" and ei.value.status == 502
    assert ei.value.message == "upstream unreachable"
    await client.aclose()


async def test_real_read_timeout_against_a_silent_server() -> None:
    """A server that accepts but never answers → read timeout → 504 (real sockets)."""
    import asyncio

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = upstream_config(base_url=f"http://127.0.0.1:{port}/v1", retries=0, timeout_s=0.2)
    client = UpstreamClient("openai", cfg)
    try:
        with pytest.raises(GatewayError) as ei:
            await client.request("GET", "/x")
        assert ei.value.status == 504
    finally:
        await client.aclose()
        server.close()


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after": "3"}) == 3
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=1445412470) == 10
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


async def test_concurrency_is_bounded_by_the_semaphore() -> None:
    import asyncio

    active = 0
    peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.02)
        active -= 1
        return httpx.Response(200)

    client = UpstreamClient(
        "openai", upstream_config(max_concurrency=3), transport=httpx.MockTransport(handler)
    )
    await asyncio.gather(*(client.request("GET", "/x") for _ in range(12)))
    assert peak == 3
    await client.aclose()


SSE_BODY = (
    b"event: image_edit.partial_image\n"
    b'data: {"type":"image_edit.partial_image","b64_json":"AAA","partial_image_index":0}\n\n'
    b": keep-alive comment\n\n"
    b"event: image_edit.completed\r\n"
    b'data: {"type":"image_edit.completed",\r\n'
    b'data: "b64_json":"BBB"}\r\n\r\n'
    b"data: [DONE]\n\n"
)


async def test_stream_parses_sse_events() -> None:
    sse = httpx.Response(200, content=SSE_BODY, headers={"content-type": "text/event-stream"})
    client, _rec = client_with([sse])
    async with client.stream("POST", "/images/edits", content=b"x") as up:
        assert up.ok
        events = [e async for e in up.events()]
    assert [name for name, _ in events] == ["image_edit.partial_image", "image_edit.completed"]
    assert events[1][1] == {"type": "image_edit.completed", "b64_json": "BBB"}
    await client.aclose()


async def test_stream_retries_before_first_byte_then_exposes_error_body() -> None:
    client, rec = client_with([json_response({"error": {"message": "busy"}}, 503)], retries=1)
    async with client.stream("POST", "/x") as up:
        assert not up.ok and up.response.status == 503
        assert up.response.json()["error"]["message"] == "busy"
        assert [e async for e in up.events()] == []
    assert len(rec.requests) == 2
    await client.aclose()


async def test_stream_timeout_before_first_byte_is_504() -> None:
    client, rec = client_with([httpx.ReadTimeout("slow")], retries=1)
    with pytest.raises(GatewayError) as ei:
        async with client.stream("POST", "/x"):
            pass
    assert ei.value.status == 504 and len(rec.requests) == 2
    await client.aclose()


async def test_stream_malformed_event_is_502() -> None:
    sse = httpx.Response(200, content=b"data: {not json\n\n")
    client, _ = client_with([sse])
    async with client.stream("POST", "/x") as up:
        with pytest.raises(GatewayError) as ei:
            _ = [e async for e in up.events()]
    assert ei.value.status == 502
    await client.aclose()


async def test_build_clients_one_per_upstream() -> None:
    cfg = GatewayConfig(
        upstreams={"openai": upstream_config("openai"), "gemini": upstream_config("gemini")},
        models={"m": model_config("gpt-image", "gpt-image-1.5")},
        default_model="m",
    )
    clients = build_clients(cfg)
    assert set(clients) == {"openai", "gemini"}
    assert clients["gemini"].kind == "gemini"
    for c in clients.values():
        await c.aclose()


def test_outbound_proxy_from_the_environment_keeps_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lean pool connects directly; with HTTPS_PROXY set, httpx (which honours it) sends."""
    from app.core.config import UpstreamConfig
    from app.upstream.client import UpstreamClient

    cfg = UpstreamConfig(kind="openai", base_url="https://api.openai.com/v1", api_key="sk-x")
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    assert UpstreamClient("openai", cfg)._pool is not None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert UpstreamClient("openai", cfg)._pool is None
    monkeypatch.setenv("NO_PROXY", "api.openai.com")
    assert UpstreamClient("openai", cfg)._pool is not None
