"""Spooled blobs for tests: bytes in unnamed temporary files, like the request spool's."""

from __future__ import annotations

import os
import tempfile
from types import TracebackType

from app.domain.blob import SpooledBlob


class Spooler:
    """`spooler(data)` → a `SpooledBlob` of `data`; the files close when the block ends."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def __call__(self, data: bytes) -> SpooledBlob:
        fd = os.open(tempfile.gettempdir(), os.O_TMPFILE | os.O_RDWR, 0o600)
        self.fds.append(fd)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        return SpooledBlob(fd, len(data))

    def __enter__(self) -> Spooler:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()
