"""`Idempotency-Key` records: who owns a key, and the first answer to give back.

The flow that uses them is `app/service/idempotency.py`; this is the contract both task stores
implement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

IdemKind = Literal["new", "pending", "done", "conflict"]


@dataclass(slots=True, frozen=True)
class IdemState:
    """The answer of `idem_begin` for an `Idempotency-Key`.

    new      -- the caller owns the key now and should run the request as `task_id`;
    pending  -- an earlier request with the same body is still in flight as `task_id`;
    done     -- it finished; `response` holds the bytes the first request answered with;
    conflict -- the key was used with a different body (HTTP 409).
    """

    kind: IdemKind
    task_id: str | None = None
    response: bytes | None = None


class IdempotencyRecords(Protocol):
    async def idem_begin(
        self,
        key_id: str,
        idem_key: str,
        fingerprint: str,
        *,
        task_id: str,
        now: float,
        ttl_s: float,
        stale_after_s: float | None = None,
    ) -> IdemState:
        """Claim (`key_id`, `idem_key`) for `task_id`, or say who has it (see `IdemState`).
        A pending record older than `stale_after_s` (its request died) is taken over."""
        ...

    async def idem_finish(self, key_id: str, idem_key: str, response: bytes) -> None:
        """Store the first request's response; later identical requests get it back."""
        ...

    async def idem_abort(self, key_id: str, idem_key: str, task_id: str) -> None:
        """Forget a pending record owned by `task_id` (its request failed before it was
        accepted, e.g. 402), so a retry with the same key can run."""
        ...
