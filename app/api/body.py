"""Request bodies (multipart or JSON) normalized into one typed `EditRequest`.

Edits arrive as multipart or JSON; generations as JSON only, with the same scalar fields but no
images, mask or `input_fidelity` (those are unknown parameters there, a 400 like any other).

The bodies and limits users see are documented in docs/API.md.

This is the gateway's hot path, so it is built around three rules:

- **Limits are enforced while reading.** The body, each file part, each text part and the image
  count are checked as bytes arrive, so an oversized or abusive upload is refused after reading at
  most one chunk past the limit, never after buffering it all.
- **At most one copy of each file's bytes.** Part data arrives from the streaming parser as
  `(chunk, start, end)`; we keep zero-copy `memoryview` slices of the (immutable) incoming
  chunks and `b"".join` them once when the part ends. A file part of a body declared larger
  than `limits.spool_threshold_bytes`, or one that grows past it, goes to the request's spool
  file instead (app/media/spool.py), written as it arrives: large uploads never sit in memory.
- **Images are sniffed on the fly.** The first bytes of an image file part name its format
  (and for PNG, its size), so a non-image or an oversized PNG is refused before the rest is read.
- **Nothing is dropped silently.** Unknown parameters, duplicates and wrongly typed values are a
  400 naming the parameter and the rule, because a gateway that ignores a typo'd `quality` charges
  for an image the client did not ask for.

The parser is framework-free: the route passes the `Content-Type` header and
`request.stream()`. Filenames and declared part content types are ignored; the media layer
identifies images by their bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

import orjson

from app.api.multipart import (
    Callbacks,
    FastMultipartParser,
    MultipartError,
    form_data_options,
    parse_options_header,
)
from app.core.config import LimitsConfig
from app.core.errors import GatewayError, bad_request, too_large
from app.domain.blob import Blob
from app.domain.edit import BodyKind, EditRequest, ImageRef, Operation
from app.media.sniff import HEAD_BYTES, check_head
from app.media.spool import Spool, SpoolWriter

__all__ = [
    "MAX_PROMPT_CHARS",
    "MAX_TEXT_PART_BYTES",
    "parse_edit_body",
    "parse_generation_body",
]

MAX_PROMPT_CHARS: Final = 32000
# A prompt of 32000 characters is at most 4 bytes per character in UTF-8.
_MAX_PROMPT_BYTES: Final = 4 * MAX_PROMPT_CHARS
# Every other text field is a short token, URL or id; 64 KiB is generous and bounds memory.
MAX_TEXT_PART_BYTES: Final = 64 * 1024

CONTENT_TYPE_MESSAGE: Final = "Content-Type must be multipart/form-data or application/json"

_STR_FIELDS: Final = frozenset(
    {
        "model",
        "size",
        "quality",
        "response_format",
        "background",
        "output_format",
        "input_fidelity",
        "moderation",
        "user",
        "callback_url",
    }
)
_INT_FIELDS: Final = frozenset({"n", "output_compression", "partial_images"})
_BOOL_FIELDS: Final = frozenset({"stream"})
_SCALAR_FIELDS: Final = _STR_FIELDS | _INT_FIELDS | _BOOL_FIELDS | {"prompt"}
# Edit-only parameters: a generation has no image inputs, and input fidelity is about them.
_EDIT_ONLY: Final = frozenset({"image", "images", "mask", "input_fidelity"})

_TRUE: Final = frozenset({"true", "1"})
_FALSE: Final = frozenset({"false", "0"})
_URL_PREFIXES: Final = ("http://", "https://", "data:")
_URL_PREFIXES_B: Final = (b"http://", b"https://", b"data:")
# A text part for `image` that is this short and printable is a mistake (`-F image=photo.png`
# without the `@`), not image bytes: real PNG/JPEG/WEBP headers contain control bytes.
_TEXT_MISTAKE_MAX: Final = 4096

# Part kinds, as small ints so the per-chunk callback compares cheaply.
_SCALAR: Final = 0
_IMAGE: Final = 1
_MASK: Final = 2
_NEVER: Final = 1 << 62  # a spill size no part reaches


async def parse_edit_body(
    content_type: str | None,
    chunks: AsyncIterator[bytes],
    limits: LimitsConfig,
    *,
    default_model: str | None,
    spool: Spool | None = None,
    declared: int | None = None,
) -> EditRequest:
    """Read a request body from `chunks` and normalize it into an `EditRequest`.

    `content_type` is the request's `Content-Type` header; `chunks` is the body as it streams in
    (Starlette's `request.stream()`). `spool` takes large file parts (none: all in memory);
    `declared` is the body's Content-Length when it has one. Raises `GatewayError`
    (400 `bad_request`, 400 `api_not_implemented` or 413 `payload_too_large`) for every bad
    input (503 if a large file cannot be spooled); the error's
    `param` names the offending parameter where there is one.
    """
    mime, options = _parse_content_type(content_type)
    if mime == "multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise bad_request("multipart/form-data Content-Type has no boundary parameter")
        return await _parse_multipart(boundary, chunks, limits, default_model, spool, declared)
    if mime == "application/json":
        return await _parse_json(chunks, limits, default_model)
    raise bad_request(CONTENT_TYPE_MESSAGE)


async def parse_generation_body(
    content_type: str | None,
    chunks: AsyncIterator[bytes],
    limits: LimitsConfig,
    *,
    default_model: str | None,
    spool: Spool | None = None,
    declared: int | None = None,
) -> EditRequest:
    """Read a generation body (JSON only, as OpenAI's) into an `EditRequest` with
    `operation="generate"` and no images; the errors are those of `parse_edit_body`.
    A generation has no file parts, so `spool` and `declared` are not used."""
    mime, _ = _parse_content_type(content_type)
    if mime != "application/json":
        raise bad_request("Content-Type must be application/json")
    return await _parse_json(chunks, limits, default_model, "generate")


# What clients send: `multipart/form-data; boundary=<token>`, split here without the regex.
_MULTIPART_PREFIX: Final = "multipart/form-data; boundary="


def _parse_content_type(value: str | None) -> tuple[str, dict[bytes, bytes]]:
    if not value:
        return "", {}
    if value.startswith(_MULTIPART_PREFIX):
        boundary = value[len(_MULTIPART_PREFIX) :]
        # An unquoted ASCII token with nothing after it is what the regex would give too;
        # quotes, more parameters or surrounding blanks go the general way.
        if (
            boundary.isascii()
            and boundary.isprintable()
            and boundary == boundary.strip()
            and ";" not in boundary
            and '"' not in boundary
            and boundary
        ):
            return "multipart/form-data", {b"boundary": boundary.encode("ascii")}
    mime, options = parse_options_header(value)
    return mime.decode("latin-1").strip(), options


# --------------------------------------------------------------------------------------------
# Shared normalization (both body kinds end here, so the rules cannot drift apart)


def _is_url(text: str) -> bool:
    return text[:8].lower().startswith(_URL_PREFIXES)


def _short(name: str) -> str:
    """A client-chosen name, bounded, for echoing in an error message."""
    return name if len(name) <= 64 else name[:61] + "..."


def _unknown(name: str) -> GatewayError:
    return bad_request(f"unknown parameter '{_short(name)}'", _short(name))


def _duplicate(name: str) -> GatewayError:
    return bad_request(
        f"duplicate parameter '{name}': it may be given only once", name.split("[", 1)[0]
    )


def _too_many_images(limit: int, param: str = "image") -> GatewayError:
    return bad_request(f"at most {limit} images are allowed", param)


def _prompt_too_long() -> GatewayError:
    return bad_request(f"prompt must be at most {MAX_PROMPT_CHARS} characters", "prompt")


def _parse_int(name: str, text: str) -> int:
    digits = text[1:] if text[:1] in ("-", "+") else text
    # str.isdigit() alone admits non-ASCII digits and int() admits "1_0"; neither is a decimal.
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
        raise bad_request(f"{name} must be an integer", name)
    return int(text)


def _set_text(name: str, text: str, out: dict[str, Any]) -> None:
    """Store the text form of scalar field `name` (already known to be a scalar field).

    Empty values mean "omitted" (the SDKs send `None` as nothing; curl users write `-F size=`),
    except `size`, kept as `""` because gpt-image-2 treats an empty size as `auto` and the adapter
    must be able to tell it from an omitted one.
    """
    if name == "prompt":
        out["prompt"] = text  # kept verbatim; emptiness is checked in `_build`
        return
    if name == "size":
        out["size"] = text  # verbatim: " 1024x1024" or "1024X1024" is not a size (adapter: 400)
        return
    value = text.strip()
    if name in _STR_FIELDS:
        if value:
            out[name] = value
    elif name in _INT_FIELDS:
        if value:
            out[name] = _parse_int(name, value)
    elif value:  # stream, the one boolean
        lowered = value.lower()
        if lowered in _TRUE:
            out[name] = True
        elif lowered in _FALSE:
            out[name] = False
        else:
            raise bad_request(f"{name} must be a boolean (true or false)", name)


def _build(
    fields: dict[str, Any],
    images: list[ImageRef],
    mask: ImageRef | None,
    body_kind: BodyKind,
    default_model: str | None,
    operation: Operation = "edit",
) -> EditRequest:
    prompt = fields.pop("prompt", None)
    if prompt is None:
        raise bad_request("prompt is required", "prompt")
    if not prompt.strip():
        raise bad_request("prompt must not be empty", "prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise _prompt_too_long()
    if not images and operation == "edit":
        raise bad_request("image is required", "image")
    model = fields.pop("model", None) or default_model
    if model is None:
        raise bad_request("model is required (this gateway sets no default_model)", "model")
    return EditRequest(
        model=model,
        prompt=prompt,
        image_refs=images,
        body_kind=body_kind,
        mask_ref=mask,
        operation=operation,
        **fields,
    )


# --------------------------------------------------------------------------------------------
# multipart/form-data


class _Multipart:
    """The parser's callbacks that collect one edit request's parts under the limits.

    One instance per request. Per part: `on_part` gets the part's Content-Disposition once its
    headers are complete, classifies the part (scalar field, image, mask) and refuses unknown,
    duplicate or excess parts before any of their data is kept; `on_part_data` enforces the
    part's byte cap and keeps zero-copy slices -- or, once the part is large (`spill_at`),
    sniffs an image file's first bytes and writes memoryviews of the received chunks straight
    to a spool file (no slice copy, no join); `on_part_end` joins the in-memory slices once
    (or finishes the spool file) and files the value.
    """

    __slots__ = (
        "cap",
        "chunk",
        "ended",
        "head",
        "image_count",
        "indexed",
        "is_file",
        "kind",
        "mask",
        "max_image_bytes",
        "max_images",
        "max_pixels",
        "name",
        "param",
        "pieces",
        "scalars",
        "size",
        "slot",
        "spill_at",
        "spool",
        "spool_files",
        "unindexed",
        "url_cap",
        "view",
        "writer",
    )

    def __init__(
        self, limits: LimitsConfig, spool: Spool | None = None, declared: int | None = None
    ) -> None:
        self.max_image_bytes = limits.max_image_bytes
        self.max_images = limits.max_images
        self.max_pixels = limits.max_image_pixels
        self.spool = spool
        # File parts of a body declared larger than the threshold go to the spool from their
        # first byte; others once they grow past it.
        threshold = limits.spool_threshold_bytes
        if spool is None:
            self.spool_files = _NEVER
        elif declared is not None and declared > threshold:
            self.spool_files = 0
        else:
            self.spool_files = threshold
        # A URL or data URL text part: base64 of the largest allowed image plus a generous header.
        self.url_cap = (limits.max_image_bytes + 2) // 3 * 4 + 1024
        self.scalars: dict[str, bytes] = {}
        self.unindexed: list[tuple[str, ImageRef]] = []  # (name as sent, ref), arrival order
        self.indexed: dict[int, ImageRef] = {}
        self.mask: ImageRef | None = None
        self.image_count = 0
        self.ended = False
        self.chunk = b""
        self.view = memoryview(b"")
        # The state of one part, as `on_part_end` leaves it for the next.
        self.name = ""
        self.param = ""
        self.is_file = False
        self.kind = _SCALAR
        self.slot = -1  # image[N] index, -1 when unindexed
        self.cap = 0
        self.size = 0
        self.pieces: list[bytes | memoryview] = []
        self.spill_at = _NEVER  # part size above which its bytes go to a spool file
        self.writer: SpoolWriter | None = None
        self.head: bytes | None = None  # an image file's first bytes, until sniffed

    def callbacks(self) -> Callbacks:
        return {
            "on_part": self.on_part,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    # headers ----------------------------------------------------------------------------

    def on_part(self, disposition: bytes | None) -> None:
        """A part's headers are complete: classify it from its Content-Disposition.

        `on_part_end` of the part before left `pieces` empty and `writer`/`head` None; every
        branch below sets `name`, `param`, `kind` and `cap`; the rest is reset here."""
        self.size = 0
        self.slot = -1
        self.spill_at = _NEVER
        if disposition is None:
            raise bad_request("malformed multipart body: a part has no Content-Disposition")
        options = form_data_options(disposition)
        raw_name = options.get(b"name")
        if not raw_name:
            raise bad_request("malformed multipart body: a part has no name")
        # Headers are latin-1 on the wire; clients put UTF-8 in them, so re-decode for messages.
        name = raw_name.decode("utf-8", "replace")
        self.name = name
        self.is_file = b"filename" in options
        if name in _SCALAR_FIELDS:
            if name in self.scalars:
                raise _duplicate(name)
            self.scalars[name] = b""  # reserves the name; the value is stored at part end
            self.kind = _SCALAR
            self.param = name
            self.cap = _MAX_PROMPT_BYTES if name == "prompt" else MAX_TEXT_PART_BYTES
        elif name == "mask":
            if self.mask is not None:
                raise _duplicate("mask")
            self.mask = ImageRef(param="mask")  # placeholder, filled at part end
            self.kind = _MASK
            self.param = "mask"
            self.cap = self.max_image_bytes if self.is_file else self.url_cap
        elif name == "image" or name.startswith("image["):
            self._begin_image(name)
        else:
            raise _unknown(name)
        if self.is_file and self.kind != _SCALAR:
            self.spill_at = self.spool_files

    def _begin_image(self, name: str) -> None:
        if name in ("image", "image[]"):
            if self.indexed:
                raise _mixed_forms()
            # Provisional (for errors while reading); `images()` renames once the count is known.
            count = len(self.unindexed)
            self.param = "image" if name == "image" and not count else f"image[{count}]"
        else:
            digits = name[6:-1]
            if not (name[-1] == "]" and digits.isascii() and digits.isdigit() and len(digits) < 10):
                raise _unknown(name)
            if self.unindexed:
                raise _mixed_forms()
            slot = int(digits)
            if slot in self.indexed:
                raise _duplicate(f"image[{slot}]")
            self.slot = slot
            self.indexed[slot] = ImageRef(param=name)  # placeholder, filled at part end
            self.param = name
        self.image_count += 1
        if self.image_count > self.max_images:
            raise _too_many_images(self.max_images)
        self.kind = _IMAGE
        self.cap = self.max_image_bytes if self.is_file else self.url_cap

    # data ---------------------------------------------------------------------------------

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        size = self.size + end - start
        if size > self.cap:
            raise self._over_cap()
        self.size = size
        if size > self.spill_at:
            writer = self.writer
            if writer is not None and self.head is None:  # spooling and sniffed: append
                writer.write(self.view[start:end] if data is self.chunk else data[start:end])
            else:
                self._spool_data(data, start, end)
        elif data is self.chunk:
            if start == 0 and end == len(data):
                self.pieces.append(data)  # a join of one bytes object returns it: no copy
            else:
                self.pieces.append(self.view[start:end])
        else:
            # Look-behind bytes the parser re-emits from its own boundary buffer: tiny.
            self.pieces.append(data[start:end])

    def _spool_data(self, data: bytes, start: int, end: int) -> None:
        """A large file part: its bytes go to a spool file as they arrive. The first time,
        the file is sniffed from its first bytes (a non-image is refused before anything is
        written) and what was kept in memory so far moves to the file."""
        piece = self.view[start:end] if data is self.chunk else data[start:end]
        writer = self.writer
        if writer is None:
            assert self.spool is not None
            self.head = b""
            for kept in self.pieces:
                self._sniff(kept)
            self._sniff(piece)
            writer = self.writer = self.spool.writer()
            for kept in self.pieces:
                writer.write(kept)
            self.pieces = []
        elif self.head is not None:
            self._sniff(piece)
        writer.write(piece)

    def _sniff(self, piece: bytes | memoryview) -> None:
        """Collect an image file's first bytes; judge them as soon as there are enough."""
        head = self.head
        if head is None:
            return
        head += bytes(piece[: HEAD_BYTES - len(head)])
        if len(head) < HEAD_BYTES:
            self.head = head
            return
        self.head = None
        check_head(head, param=self.param, max_pixels=self.max_pixels)

    def _over_cap(self) -> GatewayError:
        if self.kind == _SCALAR:
            if self.name == "prompt":
                return _prompt_too_long()
            return too_large(f"{self.name} is larger than {MAX_TEXT_PART_BYTES} bytes", self.name)
        if self.is_file:
            return too_large(
                f"{self.param} is larger than the {self.max_image_bytes}-byte limit per file",
                self.param,
            )
        return too_large(f"{self.param} URL is longer than {self.url_cap} bytes", self.param)

    def on_part_end(self) -> None:
        if self.head:  # a file shorter than the head: judge what there is
            check_head(self.head, param=self.param, max_pixels=self.max_pixels)
        self.head = None
        value: Blob
        if self.writer is not None:
            value = self.writer.finish()
            self.writer = None
        else:
            pieces = self.pieces
            first = pieces[0] if len(pieces) == 1 else None
            value = first if type(first) is bytes else b"".join(pieces)  # one bytes: no copy
            self.pieces = []
        if self.kind == _SCALAR:
            assert isinstance(value, bytes)
            self.scalars[self.name] = value
            return
        ref = self._image_ref(value)
        if self.kind == _MASK:
            self.mask = ref
        elif self.slot >= 0:
            if ref is None:
                del self.indexed[self.slot]
            else:
                self.indexed[self.slot] = ref
        elif ref is not None:
            self.unindexed.append((self.name, ref))

    def _image_ref(self, value: Blob) -> ImageRef | None:
        """An image/mask part's value as a ref; `None` for an empty text part (omitted)."""
        param = self.param
        if self.is_file:
            if not len(value):
                raise bad_request(f"{param} is an empty file", param)
            return ImageRef(param=param, data=value)
        assert isinstance(value, bytes)  # only file parts are spooled
        # Look at the head only: stripping a multi-megabyte upload would copy it.
        if value[:64].lstrip()[:8].lower().startswith(_URL_PREFIXES_B):
            try:
                return ImageRef(param=param, url=value.strip().decode("utf-8"))
            except UnicodeDecodeError:
                raise bad_request(f"{param} URL must be UTF-8 text", param) from None
        if len(value) <= _TEXT_MISTAKE_MAX:
            text = value.strip()
            if not text:
                return None
            if text.isascii() and text.decode("ascii").isprintable():
                raise bad_request(
                    f"{param} must be an uploaded file, an http(s) URL or a data: URL", param
                )
        # Image bytes sent as a part without a filename: still an upload, sniffed later.
        if len(value) > self.max_image_bytes:
            raise too_large(
                f"{param} is larger than the {self.max_image_bytes}-byte limit per file", param
            )
        return ImageRef(param=param, data=value)

    def on_end(self) -> None:
        self.ended = True

    # result ---------------------------------------------------------------------------------

    def images(self) -> list[ImageRef]:
        if self.indexed:
            return [self.indexed[k] for k in sorted(self.indexed)]
        unindexed = self.unindexed
        if len(unindexed) == 1:
            name, ref = unindexed[0]
            ref.param = "image" if name == "image" else "image[0]"
            return [ref]
        refs = []
        for i, (_, ref) in enumerate(unindexed):
            ref.param = f"image[{i}]"
            refs.append(ref)
        return refs

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, raw in self.scalars.items():
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise bad_request(f"{name} must be UTF-8 text", name) from None
            _set_text(name, text, out)
        return out


def _mixed_forms() -> GatewayError:
    return bad_request("send images either as image[N] parts or as image / image[] parts", "image")


async def _parse_multipart(
    boundary: bytes,
    chunks: AsyncIterator[bytes],
    limits: LimitsConfig,
    default_model: str | None,
    spool: Spool | None,
    declared: int | None,
) -> EditRequest:
    collector = _Multipart(limits, spool, declared)
    try:
        parser = FastMultipartParser(boundary, collector.callbacks())
    except MultipartError:
        raise bad_request("multipart boundary is too long") from None
    max_body = limits.max_body_bytes
    total = 0
    write = parser.write
    try:
        async for chunk in chunks:
            if not chunk:
                continue
            if type(chunk) is not bytes:
                chunk = bytes(chunk)  # slices must not see a caller reusing its buffer
            total += len(chunk)
            if total > max_body:
                raise too_large(f"request body is larger than {max_body} bytes")
            collector.chunk = chunk
            collector.view = memoryview(chunk)
            write(chunk)
    except MultipartError:
        raise bad_request("malformed multipart body") from None
    finally:
        collector.chunk = b""
        collector.view = memoryview(b"")
    if not collector.ended:
        raise bad_request("malformed multipart body: it ends before the closing boundary")
    return _build(
        collector.fields(), collector.images(), collector.mask, "multipart", default_model
    )


# --------------------------------------------------------------------------------------------
# application/json


async def _parse_json(
    chunks: AsyncIterator[bytes],
    limits: LimitsConfig,
    default_model: str | None,
    operation: Operation = "edit",
) -> EditRequest:
    cap = limits.max_json_bytes
    pieces: list[bytes] = []
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > cap:
            raise too_large(f"JSON body is larger than {cap} bytes")
        pieces.append(chunk)
    raw = pieces[0] if len(pieces) == 1 else b"".join(pieces)
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_request("malformed JSON body") from None
    if type(doc) is not dict:
        raise bad_request("the JSON body must be an object")

    fields: dict[str, Any] = {}
    images: list[ImageRef] | None = None
    mask: ImageRef | None = None
    seen_images_key: str | None = None
    generate = operation == "generate"
    for key, value in doc.items():
        if generate and key in _EDIT_ONLY:
            raise _unknown(key)
        if key in _SCALAR_FIELDS:
            _set_json_scalar(key, value, fields)
        elif key in ("image", "images"):
            if value is None:
                continue
            if seen_images_key is not None:
                raise bad_request("give either image or images, not both", key)
            seen_images_key = key
            images = _json_images(key, value, limits.max_images)
        elif key == "mask":
            if value is not None:
                mask = _json_ref(value, "mask")
        else:
            raise _unknown(key)
    return _build(fields, images or [], mask, "json", default_model, operation)


def _set_json_scalar(name: str, value: object, out: dict[str, Any]) -> None:
    """Check a JSON scalar's type strictly (no `"2"` for `n`, no `1` for `stream`), then store."""
    if value is None:  # OpenAI's JSON schema allows null for "not given"
        return
    if name in _INT_FIELDS:
        if type(value) is not int:
            raise bad_request(f"{name} must be an integer", name)
        out[name] = value
    elif name in _BOOL_FIELDS:
        if type(value) is not bool:
            raise bad_request(f"{name} must be a boolean (true or false)", name)
        out[name] = value
    elif type(value) is str:
        _set_text(name, value, out)
    else:
        raise bad_request(f"{name} must be a string", name)


def _json_images(key: str, value: object, max_images: int) -> list[ImageRef]:
    if type(value) is list:
        if not value:
            raise bad_request(f"{key} must contain at least one image", key)
        if len(value) > max_images:
            raise _too_many_images(max_images, key)
        return [_json_ref(item, f"{key}[{i}]") for i, item in enumerate(value)]
    if key == "images":
        raise bad_request('images must be an array of {"image_url": ...} objects', key)
    return [_json_ref(value, key)]


def _json_ref(value: object, param: str) -> ImageRef:
    """One JSON image reference: a URL / data URL string, or OpenAI's `{"image_url": ...}`."""
    if type(value) is str:
        url = value
    elif type(value) is dict:
        if "file_id" in value:
            raise GatewayError(
                "api_not_implemented",
                "file_id references are not supported; send image_url",
                param=param,
            )
        for key in value:
            if key != "image_url":
                raise _unknown(f"{param}.{key}")
        given = value.get("image_url")
        if type(given) is not str:
            raise bad_request(f"{param}.image_url must be a string", param)
        url = given
    else:
        raise bad_request(f"{param} must be an image URL string or an object with image_url", param)
    if url[:1].isspace() or url[-1:].isspace():  # strip() would copy a 20 MB data URL
        url = url.strip()
    if not _is_url(url):
        raise bad_request(f"{param} must be an http(s) URL or a data: URL", param)
    return ImageRef(param=param, url=url)
