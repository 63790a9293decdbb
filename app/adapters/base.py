"""The adapter contract: one adapter per upstream protocol family, pure (no I/O).

An adapter owns everything model-specific: which fields a model accepts (and which it ignores
or silently normalizes), how images are checked, what the upstream request looks like, and how
the upstream's answer and errors map back. The caller (app/upstream/caller.py) owns the rest:
channel, key, auth, URL, retries, failover, deadlines. In order:

    req = adapter.check_fields(req)            # before any image is fetched: cheap rules first
    adapter.check_images(req)                  # after the media layer filled req.images / mask
    up = adapter.build(req, model_id, ...)     # per attempt, for the chosen channel's model id
    out = adapter.parse(resp, req)             # a 2xx answer → images
    err = adapter.error(resp)                  # a non-2xx answer → the client's error
    event = adapter.event(name, data)          # streams: one upstream event → the client's

`build` names a protocol action (`images/edits`; generation adds `images/generations`) and the
body; it never names a host, path prefix or credential, so the same request serves every
channel kind of the protocol (`openai` and `azure-openai`; `gemini` and `vertex`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from app.core.config import ModelConfig
    from app.core.errors import GatewayError
    from app.domain.edit import EditOutput, EditRequest
    from app.upstream.request import UpstreamRequest
    from app.upstream.transport import UpstreamResponse


class Adapter(Protocol):
    name: ClassVar[str]
    protocol: ClassVar[str]  # "openai" | "gemini": which channel kinds can serve it
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

    def supports_stream(self) -> bool: ...

    def build(
        self, req: EditRequest, model_id: str, *, trace_id: str, stream: bool = False
    ) -> UpstreamRequest:
        """The upstream request for `model_id` (the chosen channel's name for the model)."""
        ...

    def parse(self, resp: UpstreamResponse, req: EditRequest) -> EditOutput:
        """A 2xx answer → images; raises `GatewayError` (502, moderation) when it has none."""
        ...

    def error(self, resp: UpstreamResponse) -> GatewayError:
        """A non-2xx answer → the gateway error the client would get if it is final."""
        ...

    def event(self, name: str, data: dict[str, Any]) -> dict[str, Any]:
        """One upstream stream event → the event relayed to the client; raises `GatewayError`
        for an upstream error event."""
        ...

    def stream_done(self, event: dict[str, Any]) -> bool:
        """Whether this relayed event completes the stream (the image is delivered)."""
        ...
