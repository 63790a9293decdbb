"""The object-storage contract: named byte blobs with a modification time.

Result images and the inputs of queued tasks live behind this interface so that every replica
sees the same objects. Two implementations pass one contract suite (`tests/storage/`):
`LocalStorage` (a directory, the single-machine default) and `S3Storage` (any S3-compatible
bucket). Keys are relative, `/`-separated paths (`<name>` or `inputs/<task id>`); each
implementation adds its own root or prefix.

An object can also be written from pieces (`put_pieces`): bytes, and bytes that stay in an open
file (`FileBacked`, e.g. a request's spooled upload), which are copied from the file in bounded
chunks or by the kernel, never read whole into memory (docs/SCALING.md, "Queued inputs").
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

# Bounded reads from a file-backed piece (the request spool's chunk size).
FILE_CHUNK: Final = 256 * 1024

_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


class StorageError(Exception):
    """The storage backend failed (unreachable, denied, ...); not raised for a missing key."""


def check_key(key: str) -> str:
    """Keys are plain relative paths: no `..`, no leading `/`, no empty segments."""
    if not _KEY_RE.match(key) or any(part in {".", ".."} for part in key.split("/")):
        raise ValueError(f"bad storage key {key!r}")
    return key


class FileBacked(Protocol):
    """Bytes in an open file: its first `size` bytes, read by offset (`pread`), so the file's
    position is never used or moved. The caller keeps the file open during the call."""

    @property
    def fd(self) -> int: ...

    @property
    def size(self) -> int: ...


# A piece of an object: bytes as they are, or bytes still in their file.
Piece = bytes | FileBacked


def pieces_size(pieces: Sequence[Piece]) -> int:
    return sum(len(p) if isinstance(p, bytes) else p.size for p in pieces)


def piece_chunks(pieces: Sequence[Piece], chunk: int = FILE_CHUNK) -> Iterator[bytes]:
    """The object's bytes in order: bytes pieces as they are, file-backed ones in `pread`s of
    at most `chunk` bytes."""
    for piece in pieces:
        if isinstance(piece, bytes):
            yield piece
            continue
        offset = 0
        while offset < piece.size:
            data = os.pread(piece.fd, min(chunk, piece.size - offset), offset)
            if not data:
                raise StorageError(f"file ended at {offset} of {piece.size} bytes")
            offset += len(data)
            yield data


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    size: int
    modified: float  # unix seconds of the last write


@dataclass(slots=True)
class Opened:
    """An object being read: its metadata and its bytes as chunks (read once)."""

    info: ObjectInfo
    chunks: AsyncIterator[bytes]


class ObjectStorage(Protocol):
    kind: str  # "local" | "s3"

    async def put(self, key: str, data: bytes) -> None:
        """Write the whole object (replacing any older one); readers never see half of it."""
        ...

    async def put_pieces(self, key: str, pieces: Sequence[Piece]) -> None:
        """Write the object made of `pieces` in order, like `put`, without reading a
        file-backed piece whole into memory (at most a few MiB of it in flight)."""
        ...

    async def get(self, key: str) -> bytes | None:
        """The whole object, or None if there is none."""
        ...

    async def open(self, key: str) -> Opened | None:
        """The object as a stream of chunks (for serving large files), or None."""
        ...

    async def head(self, key: str) -> ObjectInfo | None: ...

    async def delete(self, key: str) -> None:
        """Remove the object; a missing one is not an error."""
        ...

    async def delete_older(self, prefix: str, before: float) -> int:
        """Remove objects under `prefix` last written before `before` (unix seconds);
        returns how many. `prefix` "" means the top level only, not sub-folders."""
        ...

    async def presign_get(self, key: str, expires_s: int) -> str | None:
        """A URL that GETs the object without credentials for `expires_s` seconds, or None
        when the backend cannot sign (a local directory)."""
        ...

    async def close(self) -> None: ...
