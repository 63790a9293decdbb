"""The caller over real sockets: each channel kind's URL and auth, what is retried and what never
is, timeouts, Retry-After, concurrency caps, SSE, TLS with a throwaway CA, proxies."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from app.adapters.gpt_image import GptImageAdapter
from app.adapters.nano_banana import NanoBananaAdapter
from app.core.config import RoutingConfig
from app.core.errors import GatewayError
from app.upstream.channels import Channel
from app.upstream.hints import parse_retry_after, retry_hint
from app.upstream.transport import proxy_for
from tests.adapters import (
    GEMINI_KEY,
    OPENAI_KEY,
    Bound,
    Drop,
    Reply,
    Slow,
    Stall,
    bind,
    image_bytes,
    json_response,
    make_req,
    model_config,
    openai_error,
    openai_ok,
    parse_multipart,
    text_fields,
    upstream_config,
)
from tests.support.net import free_port

GPT = model_config("gpt-image", "gpt-image-1.5")


def gpt(answers: list, kind: str = "openai", **kw):  # type: ignore[no-untyped-def]
    return bind(lambda _: GptImageAdapter("gpt-image-1.5", GPT), answers, kind=kind, **kw)


def gemini_ok() -> Reply:
    import base64

    data = base64.b64encode(image_bytes(8, 8)).decode()
    part = {"inlineData": {"mimeType": "image/png", "data": data}}
    return json_response({"candidates": [{"content": {"parts": [part]}, "finishReason": "STOP"}]})


def banana(answers: list, kind: str = "gemini", **kw):  # type: ignore[no-untyped-def]
    mc = model_config("nano-banana", "gemini-2.5-flash-image", "gemini")
    return bind(lambda _: NanoBananaAdapter("nano-banana", mc), answers, kind=kind, **kw)


async def edit(a: Bound) -> object:
    return await a.edit(a.check_fields(make_req()), "trace-1")


# -- kinds: URL and auth ----------------------------------------------------------------------


async def test_openai_bearer_and_url() -> None:
    a, rec = gpt([openai_ok()])
    out = await edit(a)
    assert out.channel == "openai"  # type: ignore[attr-defined]
    assert rec.last.url == "http://upstream.test/v1/images/edits"
    assert rec.last.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert "api-key" not in rec.last.headers
    assert rec.last.headers["x-client-request-id"] == "trace-1"


async def test_azure_deployment_path_api_version_and_api_key_header() -> None:
    a, rec = gpt(
        [openai_ok()],
        kind="azure-openai",
        deployments={"gpt-image-1.5": "img-edit-prod"},
        api_version="2025-04-01-preview",
    )
    await edit(a)
    assert rec.last.url == (
        "http://upstream.test/v1/openai/deployments/img-edit-prod/images/edits"
        "?api-version=2025-04-01-preview"
    )
    assert rec.last.headers["api-key"] == OPENAI_KEY
    assert "authorization" not in rec.last.headers
    # the same multipart body as OpenAI's
    assert text_fields(parse_multipart(rec.last))["model"] == "gpt-image-1.5"


async def test_azure_without_a_deployment_entry_uses_the_model_id() -> None:
    a, rec = gpt([openai_ok()], kind="azure-openai")
    await edit(a)
    assert "/openai/deployments/gpt-image-1.5/images/edits?api-version=" in rec.last.url


async def test_gemini_key_header_and_url() -> None:
    a, rec = banana([gemini_ok()])
    await a.edit(a.check_fields(make_req("nano-banana")), "t")
    assert (
        rec.last.url == "http://upstream.test/v1beta/models/gemini-2.5-flash-image:generateContent"
    )
    assert rec.last.headers["x-goog-api-key"] == GEMINI_KEY
    assert "authorization" not in rec.last.headers


async def test_vertex_express_key_url_and_role() -> None:
    import orjson

    a, rec = banana([gemini_ok()], kind="vertex")
    await a.edit(a.check_fields(make_req("nano-banana")), "t")
    assert rec.last.url == (
        "http://upstream.test/v1beta/publishers/google/models/"
        "gemini-2.5-flash-image:generateContent"
    )
    assert rec.last.headers["x-goog-api-key"] == GEMINI_KEY
    body = orjson.loads(rec.last.content)
    assert body["contents"][0]["role"] == "user"  # required on Vertex


async def test_model_map_names_the_model_per_channel() -> None:
    a, rec = gpt([openai_ok()], model_map={"gpt-image-1.5": "gpt-image-2"})
    await edit(a)
    assert text_fields(parse_multipart(rec.last))["model"] == "gpt-image-2"


async def test_upstream_message_echoing_the_key_is_redacted() -> None:
    a, _ = gpt([openai_error(400, f"bad request for key {OPENAI_KEY}")])
    with pytest.raises(GatewayError) as ei:
        await edit(a)
    assert OPENAI_KEY not in ei.value.message and "***" in ei.value.message
    assert OPENAI_KEY not in repr(a.channel)


# -- retries on one channel -----------------------------------------------------------------


async def test_500_then_200_sends_the_same_body_again() -> None:
    a, rec = gpt([openai_error(500, "oops"), openai_ok()])
    await edit(a)
    assert len(rec.requests) == 2
    first, second = (parse_multipart(r) for r in rec.requests)
    assert first == second  # the same parts again (a fresh boundary per attempt)


@pytest.mark.parametrize("status", [400, 409, 415, 422])
async def test_client_errors_are_never_retried(status: int) -> None:
    a, rec = gpt([openai_error(status, "no"), openai_ok()])
    with pytest.raises(GatewayError) as ei:
        await edit(a)
    assert ei.value.status == 400
    assert len(rec.requests) == 1


async def test_zero_retries_means_one_attempt() -> None:
    a, rec = gpt([openai_error(500, "oops")], retries=0)
    with pytest.raises(GatewayError) as ei:
        await edit(a)
    assert ei.value.status == 502 and len(rec.requests) == 1


async def test_x_should_retry_false_is_respected() -> None:
    a, rec = gpt([openai_error(500, "oops", headers={"x-should-retry": "false"})])
    with pytest.raises(GatewayError):
        await edit(a)
    assert len(rec.requests) == 1


async def test_retry_after_ms_is_honoured() -> None:
    a, _ = gpt([openai_error(429, "slow", headers={"retry-after-ms": "250"}), openai_ok()])
    start = time.monotonic()
    await edit(a)
    assert time.monotonic() - start >= 0.24  # backoff_s is 0.001: only the header explains it


async def test_429_everywhere_ends_as_429_with_retry_after() -> None:
    a, rec = gpt([openai_error(429, "slow", headers={"retry-after-ms": "20"})])
    with pytest.raises(GatewayError) as ei:
        await edit(a)
    assert (ei.value.code, ei.value.status) == ("too_many_requests", 429)
    assert ei.value.headers == {"Retry-After": "1"}
    assert len(rec.requests) == 3


async def test_timeouts_become_504() -> None:
    a, rec = gpt([Stall(2)], retries=1, timeout_s=0.2)
    with pytest.raises(GatewayError) as ei:
        await edit(a)
    assert (ei.value.code, ei.value.status) == ("upstream_timeout", 504)
    assert len(rec.requests) == 2


async def test_dropped_connection_then_success() -> None:
    a, rec = gpt([Drop(), openai_ok()])
    await edit(a)
    assert len(rec.requests) == 2


async def test_connection_refused_on_a_closed_port_is_502() -> None:
    port = free_port()  # bound then released: nothing listens there
    cfg = upstream_config(base_url=f"http://127.0.0.1:{port}/v1", retries=1)
    a = Bound(GptImageAdapter("gpt-image-1.5", GPT), Channel("openai", cfg, RoutingConfig()),
              RoutingConfig(max_attempts=2))  # fmt: skip
    with pytest.raises(GatewayError) as ei:
        await edit(a)
    assert (ei.value.code, ei.value.status) == ("api_error", 502)
    assert ei.value.message == "upstream unreachable"


async def test_concurrency_is_capped_per_channel() -> None:
    a, rec = gpt([Slow(0.05, openai_ok())], max_concurrency=3)
    req = a.check_fields(make_req())
    await asyncio.gather(*(a.caller.edit(a.adapter, req, "t") for _ in range(9)))
    await a.channel.transport.aclose()
    assert rec.peak == 3 and len(rec.requests) == 9


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after": "3"}) == 3
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=1445412470) == 10
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after": "-1"}) is None  # Azure's "unknown"
    assert parse_retry_after({}) is None
    body = (
        b'{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":['
        b'{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"26s"}]}}'
    )
    assert retry_hint({}, body) == 26


# -- streams ---------------------------------------------------------------------------------

SSE_BODY = (
    b"event: image_edit.partial_image\n"
    b'data: {"type":"image_edit.partial_image","b64_json":"AAA","partial_image_index":0}\n\n'
    b": keep-alive comment\n\n"
    b"event: image_edit.completed\r\n"
    b'data: {"type":"image_edit.completed",\r\n'
    b'data: "b64_json":"BBB"}\r\n\r\n'
    b"data: [DONE]\n\n"
)
SSE = {"content-type": "text/event-stream"}


async def stream(a: Bound) -> list[dict]:
    req = a.check_fields(make_req(stream=True))
    return [e async for e in a.stream(req, "t")]


async def test_stream_parses_sse_events() -> None:
    a, _ = gpt([Reply(200, SSE_BODY, SSE)])
    events = await stream(a)
    assert [e["type"] for e in events] == ["image_edit.partial_image", "image_edit.completed"]
    assert events[1] == {"type": "image_edit.completed", "b64_json": "BBB"}


async def test_stream_retries_a_503_before_the_first_event() -> None:
    a, rec = gpt([openai_error(503, "busy"), Reply(200, SSE_BODY, SSE)])
    assert len(await stream(a)) == 2
    assert len(rec.requests) == 2


async def test_stream_timeout_before_first_event_is_504() -> None:
    a, rec = gpt([Stall(2)], retries=1, timeout_s=0.2)
    with pytest.raises(GatewayError) as ei:
        await stream(a)
    assert ei.value.status == 504 and len(rec.requests) == 2


async def test_stream_malformed_first_event_fails_over_then_502() -> None:
    a, rec = gpt([Reply(200, b"data: {not json\n\n", SSE)], retries=0)
    with pytest.raises(GatewayError) as ei:
        await stream(a)
    assert ei.value.status == 502 and len(rec.requests) == 1


# -- TLS and proxies -------------------------------------------------------------------------


async def test_https_upstream_with_a_private_ca(tmp_path: Path) -> None:
    """The path to api.openai.com: TLS verified against a CA (here a throwaway one)."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    seen: list[str] = []

    async def handler(request: web.BaseRequest) -> web.Response:
        await request.read()
        seen.append(request.headers.get("authorization", ""))
        ok = openai_ok()
        return web.Response(status=200, body=ok.content, headers=ok.headers)

    server = web.Server(handler)
    srv = await asyncio.get_running_loop().create_server(server, "127.0.0.1", 0, ssl=server_ctx)
    port = srv.sockets[0].getsockname()[1]
    base = f"https://localhost:{port}/v1"
    try:
        trusted = Channel("tls", upstream_config(base_url=base, ca_file=str(ca_file)),
                          RoutingConfig())  # fmt: skip
        a = Bound(GptImageAdapter("gpt-image-1.5", GPT), trusted, RoutingConfig())
        out = await edit(a)
        assert out.channel == "tls" and seen == [f"Bearer {OPENAI_KEY}"]  # type: ignore[attr-defined]
        untrusted = Channel("tls", upstream_config(base_url=base, retries=0), RoutingConfig())
        b = Bound(GptImageAdapter("gpt-image-1.5", GPT), untrusted, RoutingConfig())
        with pytest.raises(GatewayError) as ei:
            await edit(b)
        assert ei.value.status == 502 and len(seen) == 1  # refused before any byte was sent
    finally:
        srv.close()


def test_proxy_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy",
                "HTTP_PROXY", "http_proxy"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    assert proxy_for("https://api.openai.com/v1") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert proxy_for("https://api.openai.com/v1") == "http://proxy.internal:3128"
    monkeypatch.setenv("NO_PROXY", "api.openai.com")
    assert proxy_for("https://api.openai.com/v1") is None


async def test_requests_go_through_an_http_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A forward proxy named by HTTP_PROXY receives the absolute-form request."""
    targets: list[str] = []

    async def proxy(request: web.BaseRequest) -> web.Response:
        await request.read()
        targets.append(str(request.url))
        ok = openai_ok()
        return web.Response(status=200, body=ok.content, headers=ok.headers)

    srv = await asyncio.get_running_loop().create_server(web.Server(proxy), "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    for var in ("NO_PROXY", "no_proxy", "http_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    try:
        channel = Channel("p", upstream_config(base_url="http://api.example.test/v1"),
                          RoutingConfig())  # fmt: skip
        a = Bound(GptImageAdapter("gpt-image-1.5", GPT), channel, RoutingConfig())
        await edit(a)
        assert targets == ["http://api.example.test/v1/images/edits"]
    finally:
        srv.close()


async def test_model_map_to_gpt_image_2_drops_what_it_refuses() -> None:
    a, rec = gpt([openai_ok()], model_map={"gpt-image-1.5": "gpt-image-2"})
    await a.edit(a.check_fields(make_req(input_fidelity="high")), "t")
    fields = text_fields(parse_multipart(rec.last))
    assert fields["model"] == "gpt-image-2" and "input_fidelity" not in fields


async def test_azure_content_filter_is_moderation_and_not_retried() -> None:
    body = {
        "error": {
            "code": "content_policy_violation",
            "message": "Your request was rejected as a result of our safety system.",
            "type": "invalid_request_error",
            "inner_error": {"code": "ResponsibleAIPolicyViolation"},
        }
    }
    a, rec = gpt([json_response(body, 400), openai_ok()], kind="azure-openai")
    with pytest.raises(GatewayError) as ei:
        await edit(a)
    assert (ei.value.code, ei.value.status) == ("moderation_blocked", 400)
    assert len(rec.requests) == 1


async def test_gemini_per_day_quota_cools_the_key_for_an_hour() -> None:
    body = {
        "error": {
            "code": 429,
            "status": "RESOURCE_EXHAUSTED",
            "message": "You exceeded your current quota",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}
                    ],
                }
            ],
        }
    }
    a, rec = banana([json_response(body, 429)], retries=0)
    with pytest.raises(GatewayError) as ei:
        await a.edit(a.check_fields(make_req("nano-banana")), "t")
    assert ei.value.status == 429 and len(rec.requests) == 1
    (key,) = a.channel.keys
    assert key.cooldown_until - time.time() > 3000  # not worth retrying before the daily reset
