"""Fuzz targets: the contract each parser keeps on any input.

- `multipart`: `parse_edit_body` (multipart/form-data and JSON) either returns an `EditRequest`
  or raises `GatewayError` with a 4xx status; and the outcome does not depend on how the body
  was cut into chunks (the streaming parser sees the same bytes at every chunk offset).
- `sniff`: `probe` either returns an `Image` with positive dimensions or raises `GatewayError`
  400/413; when Pillow can also read the header, both agree on format and size.

Anything else (another exception type, a 5xx status, a disagreement) is a bug: the function
raises and atheris keeps the input as a crash artifact.
"""

from __future__ import annotations

import dataclasses
import io
import warnings
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from app.api.body import parse_edit_body
from app.core.config import LimitsConfig
from app.core.errors import GatewayError
from app.domain.edit import EditRequest
from app.media.sniff import probe

BOUNDARY = b"fuzzBOUNDARY"
# Small limits so the cap paths are reachable with short inputs.
LIMITS = LimitsConfig(max_body_bytes=8192, max_image_bytes=1024, max_images=3, max_json_bytes=4096)
MAX_PIXELS = 1_000_000
_CONTENT_TYPES = (
    b"multipart/form-data; boundary=" + BOUNDARY,
    b"application/json",
)


class ContractViolation(AssertionError):
    """A parser broke its contract on this input."""


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never waits on I/O (the body is already in memory), without a loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise ContractViolation("the parser awaited something other than the body")


async def _chunks(body: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


Outcome = tuple[str, Any]


def _parse(content_type: str, body: bytes, chunk: int) -> Outcome:
    try:
        req = _run(parse_edit_body(content_type, _chunks(body, chunk), LIMITS, default_model="m"))
    except GatewayError as exc:
        if not 400 <= exc.status < 500:
            raise ContractViolation(f"{exc!r} has status {exc.status}") from exc
        if not exc.message:
            raise ContractViolation(f"{exc!r} has no message") from exc
        return ("error", (exc.status, exc.code, exc.param))
    if not isinstance(req, EditRequest):
        raise ContractViolation(f"parse_edit_body returned {type(req).__name__}")
    if not req.image_refs or not req.prompt.strip():
        raise ContractViolation("accepted a request without images or prompt")
    if len(req.image_refs) > LIMITS.max_images:
        raise ContractViolation(f"accepted {len(req.image_refs)} images")
    return ("ok", dataclasses.astuple(req))


def split_input(data: bytes) -> tuple[str, bytes, int]:
    """The fuzzer's bytes -> (Content-Type, body, chunk size): byte 0 picks the body kind and
    the chunk size the body is cut into (1..127 bytes); the rest is the body."""
    head = data[0] if data else 0
    return _CONTENT_TYPES[head >> 7].decode(), data[1:], (head & 0x7F) or 1


def check_body(data: bytes) -> None:
    content_type, body, chunk = split_input(data)
    whole = _parse(content_type, body, max(len(body), 1))
    cut = _parse(content_type, body, chunk)
    if whole != cut:
        raise ContractViolation(f"whole body -> {whole!r}, chunks of {chunk} -> {cut!r}")


def check_sniff(data: bytes) -> None:
    try:
        image = probe(data, param="image", max_pixels=MAX_PIXELS)
    except GatewayError as exc:
        if exc.status not in (400, 413) or exc.param != "image":
            raise ContractViolation(f"{exc!r} has status {exc.status}") from exc
        return
    if image.width <= 0 or image.height <= 0 or image.width * image.height > MAX_PIXELS:
        raise ContractViolation(f"accepted {image.width}x{image.height}")
    pillow = _pillow_header(data)
    if pillow is not None:
        fmt, size = pillow
        if (fmt, size) != (image.mime, (image.width, image.height)):
            raise ContractViolation(
                f"probe: {image.mime} {image.width}x{image.height}, Pillow: {fmt} {size}"
            )


def _pillow_header(data: bytes) -> tuple[str, tuple[int, int]] | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                mime = Image.MIME.get(im.format or "", "")
                return mime, (int(im.size[0]), int(im.size[1]))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        return None
    except Exception:  # Pillow's own parsers are not under test here
        return None


TARGETS: dict[str, Callable[[bytes], None]] = {"multipart": check_body, "sniff": check_sniff}
