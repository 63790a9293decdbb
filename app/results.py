"""Where result images are kept and served from (`GET /v1/files/{name}`), with retention.

One small interface so an S3-compatible bucket can stand in for the local directory when
several replicas share results; the local implementation writes into `<data_dir>/files`.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path
from typing import Protocol

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,80}\.(png|jpeg|jpg|webp)$")
MIME_BY_EXT = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}


class ResultStore(Protocol):
    async def put(self, name: str, data: bytes) -> None: ...
    def path(self, name: str) -> Path | None:
        """The local file for a stored, unexpired result, or None."""
        ...

    async def sweep(self, now: float | None = None) -> int: ...


class LocalResultStore:
    def __init__(self, root: Path, retention_s: int) -> None:
        self.root = root
        self.retention_s = retention_s
        self.root.mkdir(parents=True, exist_ok=True)

    def _file(self, name: str) -> Path:
        if not NAME_RE.match(name):
            raise ValueError(f"bad result name {name!r}")
        return self.root / name

    async def put(self, name: str, data: bytes) -> None:
        file = self._file(name)
        tmp = file.with_suffix(file.suffix + ".tmp")
        if len(data) < 256 * 1024:
            _write(tmp, data, file)
        else:
            await asyncio.to_thread(_write, tmp, data, file)

    def path(self, name: str) -> Path | None:
        try:
            file = self._file(name)
            st = file.stat()
        except (ValueError, OSError):
            return None
        if st.st_mtime + self.retention_s < time.time():
            return None
        return file

    async def sweep(self, now: float | None = None) -> int:
        return await asyncio.to_thread(self._sweep, now or time.time())

    def _sweep(self, now: float) -> int:
        removed = 0
        for entry in os.scandir(self.root):
            try:
                if entry.stat().st_mtime + self.retention_s < now:
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                continue
        return removed


def _write(tmp: Path, data: bytes, final: Path) -> None:
    tmp.write_bytes(data)
    os.replace(tmp, final)


def mime_for(name: str) -> str:
    return MIME_BY_EXT.get(name.rsplit(".", 1)[-1], "application/octet-stream")
