"""API key administration, shared by the admin API and the CLI (they must behave the same).

A key's secret is generated here, shown once, and only its SHA-256 is stored. Secrets are
high-entropy random tokens, so a plain (unsalted) SHA-256 is the right hash: it allows an O(1)
lookup by hash, and brute force over 256 bits of randomness is not a threat.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from app.core.errors import GatewayError, bad_request
from app.core.money import to_micro
from app.domain.audit import Actor, AuditLog
from app.store.base import ApiKey, Store, hash_secret

KEY_PREFIX = "ig-"
#: Largest credit amount (and balance) accepted, in micro-credits: 1e9 credits. Keeps every sum
#: an exact integer in SQLite (int64) and in Redis Lua (doubles, exact below 2**53).
MAX_MICRO = 10**15
#: Largest rpm / max_concurrency a key may be given.
MAX_LIMIT = 1_000_000_000
UPDATABLE = frozenset({"name", "rpm", "max_concurrency", "models", "expires_at", "disabled"})


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(slots=True)
class NewKey:
    key: ApiKey
    secret: str  # shown once


def _check_limits(rpm: int | None, max_concurrency: int | None) -> None:
    if rpm is not None and rpm < 1:
        raise bad_request("rpm must be at least 1", "rpm")
    if max_concurrency is not None and max_concurrency < 1:
        raise bad_request("max_concurrency must be at least 1", "max_concurrency")
    if rpm is not None and rpm > MAX_LIMIT:
        raise bad_request(f"rpm must be at most {MAX_LIMIT}", "rpm")
    if max_concurrency is not None and max_concurrency > MAX_LIMIT:
        raise bad_request(f"max_concurrency must be at most {MAX_LIMIT}", "max_concurrency")


def parse_credits(value: Any, param: str = "credits", *, allow_negative: bool = False) -> int:
    """Client-facing decimal credits → micro-credits, refusing floats' surprises and junk."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise bad_request(f"{param} must be a number", param)
    try:
        micro = to_micro(value)
    except ValueError:
        raise bad_request(f"{param} must be a number", param) from None
    if micro < 0 and not allow_negative:
        raise bad_request(f"{param} must not be negative", param)
    if abs(micro) > MAX_MICRO:
        raise bad_request(f"{param} must not exceed {MAX_MICRO // 1_000_000} credits", param)
    return micro


class KeyAdmin:
    """Create, list, change, revoke and top up API keys.

    Every change names its `Actor` (`by=`) and is written to the audit log here, so the admin
    API, the CLI and the console cannot change a key without leaving a trace."""

    def __init__(self, store: Store, known_models: set[str] | None = None) -> None:
        self.store = store
        self.known_models = known_models
        self.audit = AuditLog(store)

    def _check_models(self, models: list[str] | None) -> None:
        if models is None:
            return
        if not models:
            raise bad_request("models must not be empty (omit it to allow every model)", "models")
        if self.known_models is None:
            return
        unknown = sorted(set(models) - self.known_models)
        if unknown:
            raise bad_request(f"unknown model(s): {', '.join(unknown)}", "models")

    async def create(
        self,
        *,
        by: Actor,
        name: str,
        credits: int,
        rpm: int | None = None,
        max_concurrency: int | None = None,
        models: list[str] | None = None,
        expires_at: float | None = None,
    ) -> NewKey:
        if not name.strip():
            raise bad_request("name must not be empty", "name")
        _check_limits(rpm, max_concurrency)
        self._check_models(models)
        secret = new_secret()
        key = ApiKey(
            id="key_" + uuid.uuid4().hex[:20],
            name=name.strip(),
            key_hash=hash_secret(secret),
            prefix=secret[:8],
            balance=credits,
            webhook_secret="whsec_" + secrets.token_urlsafe(32),
            created_at=time.time(),
            rpm=rpm,
            max_concurrency=max_concurrency,
            models=models,
            expires_at=expires_at,
        )
        await self.store.create_key(key)
        await self.audit.record(
            by,
            "key.create",
            key.id,
            {
                "name": key.name,
                "prefix": key.prefix,
                "credits_micro": credits,
                "rpm": rpm,
                "max_concurrency": max_concurrency,
                "models": models,
                "expires_at": expires_at,
            },
        )
        return NewKey(key=key, secret=secret)

    async def get(self, key_id: str) -> ApiKey:
        key = await self.store.get_key(key_id)
        if key is None:
            raise GatewayError("not_found", f"no key {key_id!r}", param="id")
        return key

    async def list(self) -> list[ApiKey]:
        return sorted(await self.store.list_keys(), key=lambda k: k.created_at)

    async def update(self, key_id: str, changes: dict[str, Any], *, by: Actor) -> ApiKey:
        unknown = set(changes) - UPDATABLE
        if unknown:
            raise bad_request(f"cannot change: {', '.join(sorted(unknown))}", sorted(unknown)[0])
        _check_limits(changes.get("rpm"), changes.get("max_concurrency"))
        if "models" in changes:
            self._check_models(changes["models"])
        if "name" in changes and not str(changes["name"]).strip():
            raise bad_request("name must not be empty", "name")
        key = await self.store.update_key(key_id, changes)
        if key is None:
            raise GatewayError("not_found", f"no key {key_id!r}", param="id")
        await self.audit.record(by, "key.update", key_id, {"changes": changes})
        return key

    async def revoke(self, key_id: str, *, by: Actor) -> None:
        if not await self.store.delete_key(key_id):
            raise GatewayError("not_found", f"no key {key_id!r}", param="id")
        await self.audit.record(by, "key.revoke", key_id)

    async def add_credits(
        self, key_id: str, amount: int, note: str | None = None, *, by: Actor
    ) -> int:
        if amount > 0 and (await self.get(key_id)).balance + amount > MAX_MICRO:
            raise bad_request(
                f"the balance would exceed {MAX_MICRO // 1_000_000} credits", "amount"
            )
        try:
            balance = await self.store.adjust_balance(key_id, amount, note, time.time())
        except KeyError:
            raise GatewayError("not_found", f"no key {key_id!r}", param="id") from None
        except ValueError as exc:
            raise bad_request(f"cannot deduct: {exc}", "amount") from None
        await self.audit.record(
            by,
            "key.credits",
            key_id,
            {"amount_micro": amount, "note": note, "balance_micro": balance},
        )
        return balance
