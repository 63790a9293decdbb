"""A minimal multipart/form-data encoder for the hot path of OpenAI edits.

httpx can encode multipart, but it guesses part content types from file names and streams the
body through a generator of small chunks. Outbound edits need exact per-part content types (OpenAI
rejects `application/octet-stream`), so the cheapest correct encoding is a list of body pieces
(app/upstream/body.py): `encode_multipart_parts` returns them unjoined with each file's `Blob`
by reference, so the transport sends a large image without copying it (an 8 MB copy costs ~4 ms
of page faults) and a spooled one straight from its file.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from app.domain.blob import Blob
from app.upstream.body import Piece

_CRLF = b"\r\n"


@dataclass(slots=True, frozen=True)
class FilePart:
    """One file part: form name, filename, content type and the bytes (in memory or spooled)."""

    name: str
    filename: str
    content_type: str
    data: Blob


def _quote(value: str) -> bytes:
    """Quote a name/filename for Content-Disposition the way browsers do (HTML5 form encoding)."""
    escaped = value.replace("\r", "%0D").replace("\n", "%0A").replace('"', "%22")
    return escaped.encode("utf-8")


def new_boundary() -> str:
    """A random boundary: with 128 random bits a collision with body bytes is not a concern."""
    return "imagegate-" + secrets.token_hex(16)


def encode_multipart_parts(
    fields: Iterable[tuple[str, str]],
    files: Iterable[FilePart],
    *,
    boundary: str | None = None,
) -> tuple[list[Piece], str]:
    """Encode text fields then files; return `(pieces, content_type_header)` with the file
    data by reference."""
    b = (boundary or new_boundary()).encode("ascii")
    dash_boundary = b"--" + b + _CRLF
    pieces: list[Piece] = []
    for name, value in fields:
        pieces.append(dash_boundary)
        pieces.append(b'Content-Disposition: form-data; name="' + _quote(name) + b'"\r\n\r\n')
        pieces.append(value.encode("utf-8"))
        pieces.append(_CRLF)
    for part in files:
        pieces.append(dash_boundary)
        pieces.append(
            b'Content-Disposition: form-data; name="'
            + _quote(part.name)
            + b'"; filename="'
            + _quote(part.filename)
            + b'"\r\nContent-Type: '
            + part.content_type.encode("ascii")
            + b"\r\n\r\n"
        )
        pieces.append(part.data)
        pieces.append(_CRLF)
    pieces.append(b"--" + b + b"--" + _CRLF)
    return pieces, "multipart/form-data; boundary=" + b.decode("ascii")
