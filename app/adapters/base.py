"""The adapter contract: one adapter per upstream protocol, registered by name.

An adapter owns everything model-specific: which fields a model accepts (and which it ignores
or silently normalizes), how images are checked, how the request is encoded for its upstream,
and how the upstream's answer and errors map back. The edit service calls, in order:

    req = adapter.check_fields(req)   # before any image is fetched: cheap rules first
    adapter.check_images(req)         # after the media layer filled req.images / req.mask
    out = await adapter.edit(req, trace_id)

Adapters raise `GatewayError` for every failure (400 rules, moderation, upstream errors).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from app.core.config import ModelConfig
    from app.domain.edit import EditOutput, EditRequest
    from app.upstream.client import UpstreamClient


class Adapter(Protocol):
    name: ClassVar[str]
    # True where the upstream honours `n` (dall-e-2); elsewhere n is silently 1 (docs/API.md).
    native_n: ClassVar[bool]
    # The answer's form when the client names none (dall-e-2: "url", as OpenAI does) ...
    default_response_format: ClassVar[str | None]
    # ... and where the client has no say at all (nano-banana always answers "url").
    forced_response_format: ClassVar[str | None]
    model: str  # the gateway's model name, e.g. "gpt-image-2"
    config: ModelConfig

    def check_fields(self, req: EditRequest) -> EditRequest:
        """Validate and normalize the scalar fields; return the request to send on."""
        ...

    def check_images(self, req: EditRequest) -> None:
        """Validate the resolved images (count, formats, sizes, mask)."""
        ...

    def max_images(self) -> int:
        """How many image inputs this model takes at most (checked before fetching)."""
        ...

    async def edit(self, req: EditRequest, trace_id: str) -> EditOutput:
        """Call the upstream and return its images."""
        ...

    def supports_stream(self) -> bool: ...

    def stream(self, req: EditRequest, trace_id: str) -> AsyncIterator[dict[str, Any]]:
        """Yield upstream SSE events as dicts (only where supports_stream())."""
        ...


class AdapterFactory(Protocol):
    name: ClassVar[str]

    def __call__(self, model: str, config: ModelConfig, upstream: UpstreamClient) -> Adapter: ...
