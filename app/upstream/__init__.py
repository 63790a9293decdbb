"""HTTP clients for the upstream image services (one pooled, retrying client per upstream)."""

from app.upstream.client import (
    SSEEvent,
    UpstreamClient,
    UpstreamResponse,
    UpstreamStream,
    build_clients,
    parse_retry_after,
)

__all__ = [
    "SSEEvent",
    "UpstreamClient",
    "UpstreamResponse",
    "UpstreamStream",
    "build_clients",
    "parse_retry_after",
]
