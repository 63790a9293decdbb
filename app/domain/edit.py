"""The one typed image request every body form is normalized into, and what adapters return.

Edits and generations share it: `operation` says which (`edit` carries image inputs,
`generate` has none), so auth, metering, channels, tasks and callbacks are one flow.

Flow: the HTTP layer parses multipart or JSON into an `EditRequest` whose images are still
`ImageRef`s (bytes of an upload, or a URL / data URL). The adapter checks the fields, the media
layer resolves the refs into sniffed `Image`s, the adapter checks the images and calls upstream,
returning an `EditOutput`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from app.domain.blob import Blob

BodyKind = Literal["multipart", "json"]
Operation = Literal["edit", "generate"]

EXT_BY_MIME = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp"}


@dataclass(slots=True)
class ImageRef:
    """An image input as the client gave it: uploaded bytes, or a URL / `data:` URL to resolve."""

    param: str  # the parameter it came from, for error messages: "image", "image[2]", "mask"
    data: Blob | None = None  # large uploads are spooled to a file (app/domain/blob.py)
    url: str | None = None


@dataclass(slots=True, frozen=True)
class Image:
    """An image identified by its bytes (never by its name or declared type)."""

    data: Blob
    mime: str  # image/png | image/jpeg | image/webp
    width: int
    height: int
    has_alpha: bool = False

    @property
    def ext(self) -> str:
        return EXT_BY_MIME.get(self.mime, "bin")


@dataclass(slots=True)
class EditRequest:
    """A client's edit or generation request in one typed shape, whatever body it arrived in.

    Optional fields are `None` when the client did not send them, so adapters can tell
    "omitted" from "given" and forward only what was given.
    """

    model: str
    prompt: str
    image_refs: list[ImageRef]
    body_kind: BodyKind
    mask_ref: ImageRef | None = None
    n: int | None = None
    size: str | None = None
    quality: str | None = None
    response_format: str | None = None
    background: str | None = None
    output_format: str | None = None
    output_compression: int | None = None
    input_fidelity: str | None = None
    moderation: str | None = None
    user: str | None = None
    stream: bool = False
    partial_images: int | None = None
    callback_url: str | None = None
    operation: Operation = "edit"  # "generate": no image inputs, the upstream's generation call
    # Filled by the media layer once the refs are fetched/decoded and sniffed.
    images: list[Image] = field(default_factory=list)
    mask: Image | None = None


@dataclass(slots=True)
class GeneratedImage:
    data: bytes
    mime: str
    revised_prompt: str | None = None

    @property
    def ext(self) -> str:
        return EXT_BY_MIME.get(self.mime, "png")


@dataclass(slots=True)
class EditOutput:
    """What an adapter got back from its upstream, before storage and response shaping."""

    images: list[GeneratedImage]
    created: int
    # OpenAI's optional response fields when the upstream gave them:
    # usage, size, quality, output_format, background.
    extra: dict[str, Any] = field(default_factory=dict)
    # The upstream's own usage report (OpenAI `usage`, Gemini `usageMetadata`): the ledger
    # keeps it and prices it (app/domain/cost.py).
    usage: dict[str, Any] | None = None
    channel: str | None = None  # the upstream channel that served it (set by the caller)
