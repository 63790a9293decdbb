"""Upstream request bodies: one buffer, or pieces sent in order without being joined.

A multipart edit is its form fields plus the images by reference; a Gemini body is JSON text
around each image's base64. When an image is spooled (`SpooledBlob`, app/domain/blob.py) its
bytes stay in the file: the transport sends the piece from the file (`sendfile` on a plain TCP
socket, bounded `pread`s otherwise) and encodes a `Base64Blob` chunk by chunk, so no piece is
ever read whole into memory (docs/ARCHITECTURE.md, "Upstream bodies").

Every piece knows its exact length up front, so a body always goes out with a Content-Length
(no chunked transfer encoding: some upstreams refuse it), and pieces are read by offset, never
consumed: a retry or a failover to another channel sends the same body again.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Sequence
from typing import Final

from app.domain.blob import CHUNK_BYTES, Blob, SpooledBlob

__all__ = ["B64_CHUNK_BYTES", "Base64Blob", "Body", "Piece", "blob_chunks", "body_size"]

# Raw bytes per base64 chunk: a multiple of 3, so the chunks' encodings concatenate into the
# encoding of the whole (no `=` padding before the last chunk).
B64_CHUNK_BYTES: Final = CHUNK_BYTES - CHUNK_BYTES % 3


class Base64Blob:
    """Standard base64 (RFC 4648, with padding) of a blob, encoded only as it is sent."""

    __slots__ = ("blob",)

    def __init__(self, blob: Blob) -> None:
        self.blob = blob

    def __len__(self) -> int:
        """The encoded length: 4 characters for every started group of 3 bytes."""
        return 4 * ((len(self.blob) + 2) // 3)

    def __repr__(self) -> str:
        inner = (
            repr(self.blob) if isinstance(self.blob, SpooledBlob) else f"<{len(self.blob)} bytes>"
        )
        return f"Base64Blob({inner})"

    def chunks(self, chunk_bytes: int = B64_CHUNK_BYTES) -> Iterator[bytes]:
        """The encoding in pieces, each the encoding of `chunk_bytes` raw bytes (the last of
        fewer); `chunk_bytes` must be a multiple of 3."""
        if chunk_bytes <= 0 or chunk_bytes % 3:
            raise ValueError(
                f"base64 chunks need a positive multiple of 3 bytes, not {chunk_bytes}"
            )
        for raw in blob_chunks(self.blob, chunk_bytes):
            yield base64.b64encode(raw)


# A piece of a body: bytes as they are, a spooled image's bytes, or the base64 of an image.
Piece = bytes | SpooledBlob | Base64Blob
# A request body: one buffer, or pieces sent in order.
Body = bytes | Sequence[Piece]


def blob_chunks(blob: Blob, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes | memoryview]:
    """`blob` in pieces of at most `chunk_bytes`: views of an in-memory one (no copy), bounded
    `pread`s of a spooled one."""
    if isinstance(blob, SpooledBlob):
        yield from blob.chunks(chunk_bytes)
        return
    view = memoryview(blob)
    for start in range(0, len(view), chunk_bytes):
        yield view[start : start + chunk_bytes]


def body_size(body: Body) -> int:
    """The exact number of bytes `body` puts on the wire (its Content-Length)."""
    return len(body) if isinstance(body, bytes) else sum(len(p) for p in body)
