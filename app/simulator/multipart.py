"""In-memory multipart/form-data reader that keeps every part exactly as sent.

Starlette's form parser folds parts into a multidict, spools files to disk and hides whether a
part had a filename or a content type. Strict upstream checks need all of that (a repeated
`image`, a file part without `Content-Type`, a string where a file belongs), so this reads the
raw parts with python-multipart, in order, with a body size cap enforced while reading.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header


class MultipartError(ValueError):
    """Malformed multipart body (no boundary, broken framing, missing disposition)."""


class BodyTooLarge(ValueError):
    """The body exceeded the cap while it was being read."""


@dataclass(slots=True)
class Part:
    name: str
    #: None for a text field; a string (possibly empty) for a file part
    filename: str | None
    #: the part's own `Content-Type` header, lower-cased without parameters; None if absent
    content_type: str | None
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def is_file(self) -> bool:
        return self.filename is not None

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def boundary_of(content_type: str) -> bytes:
    ctype, params = parse_options_header(content_type)
    if ctype != b"multipart/form-data":
        raise MultipartError("not multipart/form-data")
    boundary = params.get(b"boundary")
    if not boundary:
        raise MultipartError("multipart/form-data without a boundary")
    return boundary


async def read_multipart(
    chunks: AsyncIterator[bytes], content_type: str, *, max_body: int
) -> list[Part]:
    """Parse a streamed multipart body into its parts, in order."""
    boundary = boundary_of(content_type)
    parts: list[Part] = []
    headers: dict[str, str] = {}
    header_field: list[bytes] = []
    header_value: list[bytes] = []
    data: list[bytes] = []
    finished = False
    errors: list[str] = []

    def on_part_begin() -> None:
        headers.clear()
        data.clear()

    def on_header_field(buf: bytes, start: int, end: int) -> None:
        header_field.append(buf[start:end])

    def on_header_value(buf: bytes, start: int, end: int) -> None:
        header_value.append(buf[start:end])

    def on_header_end() -> None:
        name = b"".join(header_field).decode("latin-1").strip().lower()
        headers[name] = b"".join(header_value).decode("utf-8", errors="replace").strip()
        header_field.clear()
        header_value.clear()

    def on_part_data(buf: bytes, start: int, end: int) -> None:
        data.append(buf[start:end])

    def on_part_end() -> None:
        disposition = headers.get("content-disposition")
        if disposition is None:
            errors.append("part without Content-Disposition")
            return
        _, params = parse_options_header(disposition)
        name = params.get(b"name")
        if name is None:
            errors.append("part without a name")
            return
        filename = params.get(b"filename")
        raw_type = headers.get("content-type")
        ctype = None
        if raw_type is not None:
            ctype = parse_options_header(raw_type)[0].decode("latin-1").lower() or None
        parts.append(
            Part(
                name=name.decode("utf-8", errors="replace"),
                filename=None if filename is None else filename.decode("utf-8", "replace"),
                content_type=ctype,
                data=b"".join(data),
                headers=dict(headers),
            )
        )

    def on_end() -> None:
        nonlocal finished
        finished = True

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_end": on_end,
        },
        max_header_count=32,
    )
    total = 0
    try:
        async for chunk in chunks:
            total += len(chunk)
            if total > max_body:
                raise BodyTooLarge(f"body larger than {max_body} bytes")
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except BodyTooLarge:
        raise
    except Exception as exc:  # python-multipart raises a handful of parse errors
        raise MultipartError(f"malformed multipart body: {exc}") from exc
    if errors:
        raise MultipartError(errors[0])
    if not finished:
        raise MultipartError("multipart body ended before the closing boundary")
    return parts
