"""Queued tasks' input images in object storage; the queue keeps only a reference.

A queued edit can carry tens of MB of images; kept in Redis, a thousand of them would be
gigabytes of memory. So the encoded request (`payload.py`) is written to storage under
`inputs/<task id>` and the queue stores a short reference in its place. The worker loads it
back when it runs the task, and the inputs are deleted once the task's outcome is recorded.
Payloads queued inline (before this existed) still load as they are.

The payload is stashed as its frame's pieces (`payload.frame_request`): storage writes a
spooled image from its file (`ObjectStorage.put_pieces`), so queueing a large upload does not
read it into memory. Only an inline payload, which the queue itself must hold, is joined.
"""

from __future__ import annotations

import time

from app.domain.blob import Blob
from app.storage import ObjectStorage
from app.tasks.payload import join_frame

REF_MAGIC = b"IGR1"
FOLDER = "inputs"


class TaskInputs:
    """`inline=True` keeps payloads in the queue itself: for a local directory behind a shared
    Redis queue, where another machine's replica could claim the task but not read the file."""

    def __init__(self, storage: ObjectStorage, *, inline: bool = False) -> None:
        self.storage = storage
        self.inline = inline

    @staticmethod
    def key(task_id: str) -> str:
        return f"{FOLDER}/{task_id}"

    async def stash(self, task_id: str, frame: list[Blob]) -> bytes:
        """Store the payload `frame` (`payload.frame_request`); returns what to enqueue: a
        reference to it, or the payload itself when queued inline."""
        if self.inline:
            return join_frame(frame)
        key = self.key(task_id)
        await self.storage.put_pieces(key, frame)
        return REF_MAGIC + key.encode()

    async def load(self, payload: bytes) -> bytes | None:
        """The payload a queued reference points to (None if it is gone), or an inline one."""
        if not payload.startswith(REF_MAGIC):
            return payload
        return await self.storage.get(payload[len(REF_MAGIC) :].decode())

    async def drop(self, task_id: str) -> None:
        await self.storage.delete(self.key(task_id))

    async def sweep(self, max_age_s: float, now: float | None = None) -> int:
        """Delete inputs older than `max_age_s`: left behind by tasks that can no longer run
        (local storage; S3 buckets use a lifecycle rule on the `inputs/` folder)."""
        if self.storage.kind != "local":
            return 0
        return await self.storage.delete_older(FOLDER, (now or time.time()) - max_age_s)
