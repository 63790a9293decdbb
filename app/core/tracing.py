"""OpenTelemetry traces, on when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (else nothing runs).

`setup()` (once per process, after any fork) installs the SDK's tracer provider with a batch
processor and the OTLP/HTTP exporter, which reads the standard `OTEL_*` variables itself
(endpoint, headers, timeout, `OTEL_SERVICE_NAME`, `OTEL_BSP_*`). A request then gives:

    POST /v1/images/edits            server span; an incoming `traceparent` is continued
      store.admit / store.settle ... one span per store call (and task-queue call) made
                                     within a request
      upstream.attempt               one client span per upstream attempt: channel, model,
                                     attempt number, status code

Off (the variable unset), the server middleware and the store wrapper are not installed at
all and `attempt()` returns at once: tracing costs nothing measurable (see
bench/results/tracing-overhead.md).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from typing import Any, TypeVar

from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer, get_current_span

T = TypeVar("T")

_tracer: Tracer | None = None
_provider: Any = None
_NOOP = contextlib.nullcontext(None)


def setup(service_name: str = "imagegate") -> bool:
    """Start exporting when `OTEL_EXPORTER_OTLP_ENDPOINT` is set; True if tracing is on."""
    global _tracer, _provider
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return False
    if _tracer is not None:
        return True
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from app import __version__

    resource = Resource.create(
        {"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name),
         "service.version": __version__}
    )  # fmt: skip
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _provider = provider
    _tracer = provider.get_tracer("imagegate", __version__)
    return True


def enabled() -> bool:
    return _tracer is not None


def shutdown() -> None:
    """Flush what is buffered (end of the process)."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


# --- server side
def server_span(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> Any:
    """The span of one HTTP request, a child of the caller's `traceparent` when sent."""
    assert _tracer is not None
    from opentelemetry.propagate import extract

    carrier = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers}
    return _tracer.start_as_current_span(
        f"{method} {path}",
        context=extract(carrier),
        kind=SpanKind.SERVER,
        attributes={"http.request.method": method, "url.path": path},
    )


# --- upstream attempts
def attempt(channel: str, model: str, number: int, method: str, url: str) -> Any:
    """Context manager around one upstream attempt: a client span carrying channel and model
    (yields the span, or None when tracing is off)."""
    if _tracer is None:
        return _NOOP
    return _tracer.start_as_current_span(
        "upstream.attempt",
        kind=SpanKind.CLIENT,
        attributes={
            "imagegate.channel": channel,
            "imagegate.model": model,
            "imagegate.attempt": number,
            "http.request.method": method,
            "url.full": url,
        },
    )


def set_status(span: Any, status: int) -> None:
    if span is not None:
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))


# --- store calls
class _Traced:
    """Wraps an object so each of its coroutine methods, called within a trace (a request),
    runs in a span `<prefix>.<name>`."""

    def __init__(self, inner: Any, prefix: str) -> None:
        self._inner = inner
        self._prefix = prefix

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if name.startswith("_") or not inspect.iscoroutinefunction(value):
            return value
        span_name = f"{self._prefix}.{name}"

        @functools.wraps(value)
        async def traced(*args: Any, **kwargs: Any) -> Any:
            # Only inside a trace: idle workers polling the queue would otherwise make a
            # root span every second.
            if _tracer is None or not get_current_span().is_recording():
                return await value(*args, **kwargs)
            with _tracer.start_as_current_span(span_name, kind=SpanKind.CLIENT):
                return await value(*args, **kwargs)

        setattr(self, name, traced)  # built once per method
        return traced


def traced(obj: T, prefix: str) -> T:
    """`obj` itself when tracing is off; else a wrapper that traces its async methods."""
    if _tracer is None:
        return obj
    return _Traced(obj, prefix)  # type: ignore[return-value]
