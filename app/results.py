"""Result images: kept in object storage for their retention, addressed by URL.

Names are `<task uuid>_<index>.<ext>`, unguessable, so a URL works as a capability the way a
CDN link does. Where a URL points depends on `storage.url_mode`:

- `proxy` (default): `{base}/v1/files/{name}`; any replica streams the object from storage;
- `presign`: the same URL answers 302 to a presigned GET that expires with the retention;
- `public`: `{public_base_url}{prefix}{name}`, served by a CDN or the bucket itself.

An object older than the retention is refused (404) whatever the mode; the sweeper deletes
expired local files, a bucket lifecycle rule expires S3 objects (docs/SCALING.md).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from app.core.config import StorageConfig
from app.storage import ObjectInfo, ObjectStorage, Opened

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,80}\.(png|jpeg|jpg|webp)$")
MIME_BY_EXT = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}


class Results:
    def __init__(
        self,
        storage: ObjectStorage,
        config: StorageConfig,
        retention_s: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.retention_s = retention_s
        self.url_mode = config.url_mode
        self.public_prefix = (config.public_base_url or "") + config.prefix

    async def put(self, name: str, data: bytes) -> None:
        if not NAME_RE.match(name):
            raise ValueError(f"bad result name {name!r}")
        await self.storage.put(name, data)

    def url(self, name: str, base_url: str) -> str:
        if self.url_mode == "public":
            return self.public_prefix + name
        return f"{base_url}/v1/files/{name}"

    def _fresh(self, info: ObjectInfo | None, now: float) -> bool:
        return info is not None and info.modified + self.retention_s >= now

    async def info(self, name: str, now: float | None = None) -> ObjectInfo | None:
        """Metadata of a stored, unexpired result; None for unknown, expired or bad names."""
        if not NAME_RE.match(name):
            return None
        info = await self.storage.head(name)
        return info if self._fresh(info, now or self.clock()) else None

    async def open(self, name: str) -> Opened | None:
        """The result's bytes as a stream, if it exists and has not expired."""
        if not NAME_RE.match(name):
            return None
        opened = await self.storage.open(name)
        if opened is None:
            return None
        if not self._fresh(opened.info, self.clock()):
            await opened.chunks.aclose()  # type: ignore[attr-defined]
            return None
        return opened

    async def presigned(self, name: str) -> str | None:
        """A presigned GET that stops working when the result expires; None if expired."""
        now = self.clock()
        info = await self.info(name, now)
        if info is None:
            return None
        remaining = int(info.modified + self.retention_s - now)
        return await self.storage.presign_get(name, max(1, remaining))

    async def sweep(self, now: float | None = None) -> int:
        """Delete expired results (local storage; S3 buckets use a lifecycle rule)."""
        if self.storage.kind != "local":
            return 0
        return await self.storage.delete_older("", (now or self.clock()) - self.retention_s)


def mime_for(name: str) -> str:
    return MIME_BY_EXT.get(name.rsplit(".", 1)[-1], "application/octet-stream")
