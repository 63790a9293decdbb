"""The audit log: every admin action, whoever made it (admin API, CLI or console).

Actions are recorded by the layer that performs them -- `KeyAdmin` for keys and credits, the
task admin for redeliveries -- and that layer takes the `Actor` as a required argument, so no
front end can change anything without saying who it is. Entries hold the action's non-secret
parameters; a field that could carry a secret is refused here, once, for every caller.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from app.store.base import AuditEntry, AuditQuery, Store

Source = Literal["api", "cli", "console"]

#: Field names that must never be written to the log, at any depth.
SECRET_FIELDS = frozenset(
    {"key", "secret", "key_hash", "webhook_secret", "token", "password", "authorization"}
)


@dataclass(slots=True, frozen=True)
class Actor:
    """Who makes an admin change: a name, the front end used and the client's address."""

    name: str  # "admin" for the admin key; the operator's user name on the CLI
    source: Source
    client: str | None = None


def _check_no_secrets(value: Any, path: str = "details") -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if str(k).lower() in SECRET_FIELDS:
                raise ValueError(f"{path}.{k}: secrets are never written to the audit log")
            _check_no_secrets(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_no_secrets(v, f"{path}[{i}]")


class AuditLog:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    async def record(
        self, by: Actor, action: str, target: str, details: dict[str, Any] | None = None
    ) -> AuditEntry:
        details = dict(details or {})
        _check_no_secrets(details)
        entry = AuditEntry(
            id="aud_" + uuid.uuid4().hex[:20],
            at=self.clock(),
            actor=by.name,
            source=by.source,
            action=action,
            target=target,
            client=by.client,
            details=details,
        )
        await self.store.add_audit(entry)
        return entry

    async def entries(
        self, query: AuditQuery, *, limit: int = 100, offset: int = 0
    ) -> list[AuditEntry]:
        return await self.store.audit_entries(query, limit=limit, offset=offset)
