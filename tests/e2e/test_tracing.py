"""OpenTelemetry: a gateway process with OTEL_EXPORTER_OTLP_ENDPOINT set exports its spans over
OTLP/HTTP to a receiver on 127.0.0.1 that decodes the protobuf like a collector would."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.simulator import create_simulator_app
from tests.e2e.test_metering import ADMIN, ADMIN_KEY, PNG
from tests.support.net import ThreadedServer
from tests.support.procs import GatewayProcess, write_config

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class Collector:
    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()

        async def traces(request: Request) -> Response:
            assert request.headers["content-type"] == "application/x-protobuf"
            message = ExportTraceServiceRequest.FromString(await request.body())
            with self.lock:
                for resource in message.resource_spans:
                    for scope in resource.scope_spans:
                        self.spans.extend(scope.spans)
            return Response(b"", media_type="application/x-protobuf")

        self.server = ThreadedServer(
            Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])
        )

    def in_trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.trace_id.hex() == trace_id]


def _attrs(span: Span) -> dict[str, object]:
    out: dict[str, object] = {}
    for kv in span.attributes:
        v = kv.value
        out[kv.key] = v.string_value if v.HasField("string_value") else v.int_value
    return out


def test_spans_exported_and_traceparent_continued(tmp_path: Path) -> None:
    collector = Collector()
    collector.server.start()
    sim = ThreadedServer(create_simulator_app()).start()
    config = write_config(sim.url, tmp_path / "gateway.yaml")
    env = {
        "IMAGEGATE_ADMIN_KEY": ADMIN_KEY,
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.server.url,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    gw = GatewayProcess(config, env=env).start()
    try:
        key = httpx.post(
            gw.url + "/admin/keys", headers=ADMIN, json={"name": "t", "credits": 5}, timeout=10
        ).json()
        # the first upstream attempt fails: two attempt spans under one request
        fault = {"protocol": "openai", "kind": "status", "status": 500, "times": 1}
        r = httpx.post(sim.url + "/_sim/faults", json=fault, timeout=5)
        assert r.status_code < 300, r.text
        r = httpx.post(
            gw.url + "/v1/images/edits",
            headers={
                "authorization": f"Bearer {key['key']}",
                "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01",
            },
            data={"model": "gpt-image-1", "prompt": "a leaf"},
            files={"image": ("a.png", PNG, "image/png")},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            spans = collector.in_trace(TRACE_ID)
            if sum(s.name == "upstream.attempt" for s in spans) >= 2 and any(
                s.name == "store.settle" for s in spans
            ):
                break
            time.sleep(0.1)
    finally:
        gw.stop()
        sim.stop()
        collector.server.stop()
    by_name: dict[str, list[Span]] = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    (server,) = by_name["POST /v1/images/edits"]
    assert server.kind == Span.SPAN_KIND_SERVER
    assert server.parent_span_id.hex() == PARENT_ID  # the caller's span continued
    assert _attrs(server)["http.response.status_code"] == 200
    assert _attrs(server)["imagegate.trace_id"] == r.headers["x-request-id"]
    sid = server.span_id
    for name in ("store.admit", "store.settle"):
        (span,) = by_name[name]
        assert span.parent_span_id == sid, name
    attempts = sorted(by_name["upstream.attempt"], key=lambda s: _attrs(s)["imagegate.attempt"])
    assert [_attrs(a)["imagegate.attempt"] for a in attempts] == [1, 2]
    assert [_attrs(a)["http.response.status_code"] for a in attempts] == [500, 200]
    for a in attempts:
        assert a.kind == Span.SPAN_KIND_CLIENT and a.parent_span_id == sid
        assert _attrs(a)["imagegate.channel"] == "openai"
        assert _attrs(a)["imagegate.model"] == "gpt-image-1"
    assert attempts[0].status.code == 2  # STATUS_CODE_ERROR for the 500


def test_no_endpoint_no_tracing(tmp_path: Path) -> None:
    """Unset, nothing is installed: no middleware, the store is the store itself."""
    from app.api.app import create_app
    from app.api.middleware import TracingMiddleware
    from app.core import tracing
    from app.core.config import Settings
    from app.gateway import Gateway

    assert tracing.setup() is False and not tracing.enabled()
    settings = Settings(data_dir=tmp_path, admin_key="x", redis_url=None)
    gw = Gateway(settings)
    app = create_app(settings, gw.config, gateway=gw)
    assert all(m.cls is not TracingMiddleware for m in app.user_middleware)
    assert type(gw.store).__name__ == "SQLiteStore"
    off = tracing.attempt("openai", "gpt-image-1", 1, "POST", "http://x")
    assert off is tracing.attempt("a", "m", 2, "GET", "y")  # one shared no-op
