"""The store contract: API keys, metering (rate limits, concurrency, credits) and the usage ledger.

Two implementations pass one contract suite (tests/store/test_contract.py): `RedisStore`
(Lua scripts, every per-key structure hash-tagged `{key_id}` for Redis Cluster) and
`SQLiteStore` (embedded, WAL, one transaction per operation). All amounts are integer
micro-credits; all times are unix seconds as floats and are passed in by the caller (`now`),
so tests can drive the clock.

Metering is reserve -> settle. `admit` is the single round trip before the upstream call: it
re-checks the key (exists, enabled, unexpired), the rpm sliding window, the concurrency slots
and the balance, and on success atomically records the request in the window, takes a slot
and moves `cost` from the balance into a reservation. `settle` is the single round trip after:
it charges `charge` (<= reserved), returns the rest to the balance, frees the slot and appends
the ledger row, exactly once per reservation id. It answers three ways (`SettleOutcome`):
settled now, already settled (an earlier settle charged it: a queued task that ran twice), or
gone (refunded by an earlier failed settle or by expiry: nothing was charged, and whoever
still wants to deliver must reserve again). The same round trip can keep a finished
synchronous request as a task record (`TaskRecord`), so `GET /v1/tasks/{id}` finds it the
moment the response is sent. A reservation not settled by its `expires_at` is refunded in full
by `sweep`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

AdmitStatus = Literal[
    "ok", "invalid_token", "rate_limited", "concurrency_limited", "insufficient_credits"
]
UsageStatus = Literal["succeeded", "failed", "expired"]
GroupBy = Literal["day", "model", "key", "channel", "operation"]
GROUP_BYS: tuple[str, ...] = ("day", "model", "key", "channel", "operation")
Operation = Literal["edit", "generate"]
#: settled: charged (or refunded) now; already_settled: an earlier settle charged it;
#: gone: no live reservation and no charge (refunded, or expired and swept).
SettleOutcome = Literal["settled", "already_settled", "gone"]
#: live: reserved and unsettled; settled: charged; gone: refunded or expired (nothing charged).
ReservationState = Literal["live", "settled", "gone"]


@dataclass(slots=True)
class ApiKey:
    id: str  # public id, e.g. "key_3f9c..."; safe to show and log
    name: str
    key_hash: str  # sha256 hex of the secret; the secret itself is never stored
    prefix: str  # first characters of the secret, for display ("ig-AbC1...")
    balance: int  # micro-credits, never below zero
    webhook_secret: str
    created_at: float
    rpm: int | None = None  # None: config defaults apply
    max_concurrency: int | None = None
    models: list[str] | None = None  # None: every model
    expires_at: float | None = None
    disabled: bool = False

    def public(self) -> dict[str, Any]:
        """The fields an admin may see (no hash, no webhook secret)."""
        d = asdict(self)
        d.pop("key_hash")
        d.pop("webhook_secret")
        return d


@dataclass(slots=True)
class Admission:
    """The answer of `admit`: whether the request may go upstream, and the rate-limit state."""

    status: AdmitStatus
    balance: int  # balance after the reservation (or current balance when refused)
    limit: int  # rpm in force
    remaining: int  # requests left in the current 60 s window after this one
    reset_s: float  # seconds until the window is fully free again
    retry_after_s: float = 0.0  # when refused for rate/concurrency: seconds until worth retrying

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(slots=True)
class UsageRecord:
    """One ledger row per metered request (read back by `GET /admin/usage`)."""

    reservation_id: str
    key_id: str
    model: str
    size_tier: str  # "1k" | "other" | "request"
    images: int
    credits: int  # micro-credits actually charged
    reserved: int  # micro-credits that were held
    task_id: str
    trace_id: str
    status: UsageStatus
    latency_ms: int
    created_at: float
    error_code: str | None = None
    # Which upstream account served it ("" in rows older than channels) and what was asked.
    channel: str = ""
    operation: str = "edit"
    # The upstream's own report (OpenAI `usage`, Gemini `usageMetadata`), when it sent one.
    usage: dict[str, Any] | None = None
    # What the upstream charged, in micro-dollars; estimated when no usage was reported
    # (rows older than cost tracking read as 0, estimated).
    cost_usd: int = 0
    cost_estimated: bool = False


@dataclass(slots=True, frozen=True)
class TaskRecord:
    """A finished synchronous request kept as a task (its public JSON), written by `settle` in
    the same atomic step; readable with `task_record(key_id, task_id)` for `ttl_s` seconds."""

    task_id: str
    body: bytes
    ttl_s: float


@dataclass(slots=True)
class UsageQuery:
    """Ledger filters. `since` is inclusive and `until` exclusive (`since <= created_at < until`),
    so consecutive windows never count a row twice."""

    key_id: str | None = None
    model: str | None = None
    since: float | None = None
    until: float | None = None
    channel: str | None = None
    operation: str | None = None
    status: str | None = None


@dataclass(slots=True)
class UsageGroup:
    group: str  # the day (YYYY-MM-DD, UTC), model, key id, channel or operation
    requests: int = 0
    succeeded: int = 0
    failed: int = 0
    images: int = 0
    credits: int = 0
    cost_usd: int = 0  # micro-dollars the upstream charged
    estimated: int = 0  # rows whose cost is an estimate


@dataclass(slots=True)
class AuditEntry:
    """One admin action: who (actor, from which source and client address) did what to what.

    `details` holds the non-secret parameters of the action (a key's new limits, a credit
    amount); secrets never enter it (app/domain/audit.py checks)."""

    id: str
    at: float
    actor: str  # "admin" (the admin key), the operator's user name for the CLI, ...
    source: str  # "api" | "cli" | "console"
    action: str  # e.g. "key.create", "key.credits", "task.redeliver"
    target: str  # the key id, task id, channel name ... acted on
    client: str | None = None  # the client's address (API, console); the host for the CLI
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class AuditQuery:
    """Audit filters; `since` inclusive, `until` exclusive, like `UsageQuery`."""

    actor: str | None = None
    source: str | None = None
    action: str | None = None
    target: str | None = None
    since: float | None = None
    until: float | None = None

    def matches(self, e: AuditEntry) -> bool:
        return (
            (self.actor is None or e.actor == self.actor)
            and (self.source is None or e.source == self.source)
            and (self.action is None or e.action == self.action)
            and (self.target is None or e.target == self.target)
            and (self.since is None or e.at >= self.since)
            and (self.until is None or e.at < self.until)
        )


@dataclass(slots=True)
class ConsoleSession:
    """A signed-in web console session. The cookie carries a random token; the store keeps only
    its sha256 (`id_hash`), so a leaked store dump cannot be replayed as a cookie. Kept in the
    store, not in a process, so every replica honours it."""

    id_hash: str
    role: Literal["admin", "key"]
    csrf: str  # the token every state-changing console request must echo
    created_at: float
    expires_at: float
    key_id: str | None = None  # role "key": the API key that signed in
    # role "admin": sha256 of the admin key it signed in with; a changed admin key ends it
    credential: str = ""


@dataclass(slots=True)
class Reservation:
    reservation_id: str
    key_id: str
    amount: int
    expires_at: float
    meta: dict[str, Any] = field(default_factory=dict)


class Store(Protocol):
    """Everything the gateway keeps about keys and money. Implementations are async-safe."""

    # --- lifecycle
    async def ping(self) -> bool: ...
    async def close(self) -> None: ...

    # --- keys
    async def create_key(self, key: ApiKey) -> None: ...
    async def get_key(self, key_id: str) -> ApiKey | None: ...
    async def find_key_by_hash(self, key_hash: str) -> ApiKey | None: ...
    async def list_keys(self) -> list[ApiKey]: ...
    async def update_key(self, key_id: str, changes: dict[str, Any]) -> ApiKey | None:
        """Change any of: name, rpm, max_concurrency, models, expires_at, disabled."""
        ...

    async def delete_key(self, key_id: str) -> bool: ...
    async def adjust_balance(self, key_id: str, amount: int, note: str | None, now: float) -> int:
        """Add (or, negative, deduct) micro-credits; returns the new balance.

        Raises KeyError for an unknown key and ValueError if a deduction would go below zero.
        """
        ...

    # --- metering
    async def admit(
        self,
        key_id: str,
        *,
        reservation_id: str,
        cost: int,
        rpm: int,
        max_concurrency: int,
        now: float,
        hold_s: float,
        meta: dict[str, Any] | None = None,
    ) -> Admission:
        """One atomic step: key valid -> rpm window -> concurrency slot -> balance -> reserve."""
        ...

    async def extend(self, reservation_id: str, key_id: str, expires_at: float) -> ReservationState:
        """Push a live reservation's expiry out (a queued task is still wanted); else say
        whether it was charged (`settled`, remembered when settled with `remember_s`) or not."""
        ...

    async def settle(
        self,
        reservation_id: str,
        key_id: str,
        charge: int,
        record: UsageRecord,
        *,
        task: TaskRecord | None = None,
        remember_s: float = 0,
    ) -> SettleOutcome:
        """Charge `charge` (clamped to the reserved amount), refund the rest, free the slot and
        append `record` (with `credits` = the charge) -- once -- and store `task` with it.
        A succeeded settle with `remember_s` > 0 is remembered that long, so a later settle or
        `extend` of the same id answers `already_settled` / `settled` instead of `gone`."""
        ...

    async def task_record(self, key_id: str, task_id: str) -> bytes | None:
        """The task record a settle stored for this key, or None (unknown or expired)."""
        ...

    async def sweep(self, now: float) -> int:
        """Refund every reservation past its expiry, free its slot, ledger it as 'expired'."""
        ...

    # --- ledger
    async def usage_records(
        self, query: UsageQuery, *, limit: int = 100, offset: int = 0
    ) -> list[UsageRecord]:
        """Newest first."""
        ...

    async def usage_summary(self, query: UsageQuery, group_by: GroupBy) -> list[UsageGroup]: ...

    # --- audit log
    async def add_audit(self, entry: AuditEntry) -> None:
        """Append an admin action (entries are never changed or removed by the gateway)."""
        ...

    async def audit_entries(
        self, query: AuditQuery, *, limit: int = 100, offset: int = 0
    ) -> list[AuditEntry]:
        """Newest first."""
        ...

    # --- console sessions
    async def put_session(self, session: ConsoleSession, now: float) -> None:
        """Keep a session until its `expires_at` (then it is gone by itself)."""
        ...

    async def get_session(self, id_hash: str, now: float) -> ConsoleSession | None:
        """The live session with this id hash; None if unknown or expired at `now`."""
        ...

    async def delete_session(self, id_hash: str) -> bool: ...


class StoreUnavailable(Exception):
    """The store cannot be reached. The gateway fails closed: 503, never unmetered service."""


# --- helpers shared by the implementations (and the gateway)

#: The fields `update_key` may change; anything else is a ValueError (ids, hashes and the
#: balance have their own, audited, paths).
UPDATABLE_KEY_FIELDS = frozenset(
    {"name", "rpm", "max_concurrency", "models", "expires_at", "disabled"}
)

#: Seconds in the rpm sliding window.
RATE_WINDOW_S = 60.0

#: `retry_after_s` when refused for concurrency: a slot frees when some request finishes, which
#: the store cannot predict, so it suggests a short, fixed pause.
CONCURRENCY_RETRY_S = 1.0

#: error_code of the ledger row written for a reservation that expired unsettled.
EXPIRED_ERROR_CODE = "reservation_expired"

_KEY_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def hash_secret(secret: str) -> str:
    """sha256 hex of an API key secret: what `ApiKey.key_hash` holds and `find_key_by_hash`
    looks up. Plain sha256 is enough because secrets are long random tokens, not passwords."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


_DAY_S = 86_400
_day: tuple[float, float, str] = (0.0, 0.0, "")  # [start, end) of the last day asked, its name


def utc_day(ts: float) -> str:
    """The UTC calendar day (YYYY-MM-DD) of a unix time: the `day` group of `usage_summary`.

    Unix time has no leap seconds, so a UTC day is exactly [k*86400, (k+1)*86400); the last
    day named is remembered (admit and settle ask for it on every request)."""
    global _day
    start, end, name = _day
    if start <= ts < end:
        return name
    name = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")
    start = ts // _DAY_S * _DAY_S
    _day = (start, start + _DAY_S, name)
    return name


def check_key_id(key_id: str) -> str:
    """Reject ids that could break the Redis hash tag (`{`, `}`) or key layout. Both stores use
    it so an id valid on one is valid on the other."""
    if not _KEY_ID_RE.match(key_id):
        raise ValueError(f"invalid key id: {key_id!r}")
    return key_id


def row_matches(query: UsageQuery, row: UsageRecord) -> bool:
    """The non-time filters of `query` (the time range is each store's index lookup)."""
    return (
        (query.key_id is None or row.key_id == query.key_id)
        and (query.model is None or row.model == query.model)
        and (query.channel is None or row.channel == query.channel)
        and (query.operation is None or row.operation == query.operation)
        and (query.status is None or row.status == query.status)
    )


def check_admit_args(cost: int, rpm: int, max_concurrency: int, hold_s: float) -> None:
    """Shared argument validation for `admit`: limits are resolved by the caller (key override
    or config default) and must be positive; there is no 'unlimited' sentinel."""
    if cost < 0:
        raise ValueError("cost must be >= 0")
    if rpm < 1:
        raise ValueError("rpm must be >= 1")
    if max_concurrency < 1:
        raise ValueError("max_concurrency must be >= 1")
    if hold_s <= 0:
        raise ValueError("hold_s must be > 0")


def check_key_changes(changes: dict[str, Any]) -> None:
    """Validate an `update_key` change set (field names and value types)."""
    unknown = set(changes) - UPDATABLE_KEY_FIELDS
    if unknown:
        raise ValueError(f"cannot change: {', '.join(sorted(unknown))}")
    for name in ("rpm", "max_concurrency"):
        v = changes.get(name)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError(f"{name} must be a positive integer or null")
    if "name" in changes and not isinstance(changes["name"], str):
        raise ValueError("name must be a string")
    if "models" in changes and changes["models"] is not None:
        models = changes["models"]
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise ValueError("models must be a list of strings or null")
    if "disabled" in changes and not isinstance(changes["disabled"], bool):
        raise ValueError("disabled must be a boolean")
    exp = changes.get("expires_at")
    if exp is not None and (isinstance(exp, bool) or not isinstance(exp, int | float)):
        raise ValueError("expires_at must be a number or null")
