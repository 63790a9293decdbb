"""Image bytes that live in a spool file instead of the process's memory.

An edit spends 10-120 s upstream, so a gateway holds thousands of requests in flight; keeping
each upload in memory until the upstream answers would cost RAM in proportion to the uploads.
Uploads above `limits.spool_threshold_bytes` are therefore written to a temporary file while
they arrive (docs/CONFIG.md), and flow through the gateway as a `SpooledBlob`: a file
descriptor and a size. Whatever takes image bytes takes a `Blob` (`bytes | SpooledBlob`):
`len()` works on both, and the few readers of the bytes (the structure probe, the upstream
body, task inputs) read a spooled one in bounded pieces.

The file is anonymous where the platform allows (`O_TMPFILE`): it has no name, so no crash can
leave it behind. The blob does not own it: the request's spool closes every file it created
when the request ends (app/media/spool.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Final

__all__ = ["CHUNK_BYTES", "Blob", "SpooledBlob", "blob_bytes"]

# Bounded reads from a spool file: big enough to amortize the system call, small enough that
# thousands of concurrent reads stay a few MB in all.
CHUNK_BYTES: Final = 256 * 1024


class SpooledBlob:
    """`size` bytes at the start of the open file `fd` (read with `pread`, so concurrent
    readers never share a file position)."""

    __slots__ = ("fd", "size")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"SpooledBlob(fd={self.fd}, size={self.size})"

    def pread(self, size: int, offset: int = 0) -> bytes:
        """Up to `size` bytes from `offset` (fewer only at the end of the blob)."""
        size = max(0, min(size, self.size - offset))
        out = os.pread(self.fd, size, offset)
        while len(out) < size:  # a short read from a regular file is rare but legal
            more = os.pread(self.fd, size - len(out), offset + len(out))
            if not more:
                raise OSError(f"spool file ended at {offset + len(out)} of {self.size} bytes")
            out += more
        return out

    def head(self, n: int) -> bytes:
        return self.pread(n, 0)

    def chunks(self, chunk_size: int = CHUNK_BYTES, start: int = 0) -> Iterator[bytes]:
        """The blob from `start` in pieces of at most `chunk_size` bytes."""
        offset = start
        while offset < self.size:
            piece = self.pread(chunk_size, offset)
            offset += len(piece)
            yield piece

    def read_all(self) -> bytes:
        """The whole blob in memory: for small blobs and tests, never on the in-flight path."""
        return self.pread(self.size, 0)


Blob = bytes | SpooledBlob


def blob_bytes(blob: Blob) -> bytes:
    """`blob` as bytes (reads a spooled one whole: only where the bytes must be in memory)."""
    return blob if isinstance(blob, bytes) else blob.read_all()
