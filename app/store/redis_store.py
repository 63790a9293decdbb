"""The Redis store: many gateway replicas share one Redis (or Redis Cluster).

Why Lua: `admit` and `settle` must each be one atomic round trip, or two replicas admitting at
the same moment could both see the last credit. Every script touches only keys of one hash
slot -- everything that belongs to an API key is tagged `{key_id}` -- so it runs unchanged on
Redis Cluster. Scripts are registered once (EVALSHA); redis-py reloads a script when the server
answers NOSCRIPT (e.g. after a restart flushed the script cache), pipelines check with SCRIPT
EXISTS before executing.

Key layout (prefix `ig` by default, K = the key id):

    ig:{K}:key       hash    the ApiKey fields; `balance` is the authoritative balance
    ig:{K}:win       zset    rpm sliding-window log: member reservation id, score admit time
    ig:{K}:res       hash    live reservations: id -> "amount\\tadmitted_at\\tmeta json"
    ig:{K}:exp       zset    live reservations: id -> expires_at (sweep and `extend`)
    ig:{K}:ledger    zset    usage rows: "credits:reserved:record json", score created_at
    ig:{K}:agg       hash    "2\\tday\\tchannel\\toperation\\tmodel\\tmetric" -> count (requests,
                             succeeded, failed, images, credits, cost, estimated), updated by
                             the same script that ledgers (older "day\\tmodel\\tmetric" fields
                             still count, as channel "" and operation "edit")
    ig:{K}:credits   list    credit log (top-ups and deductions) as JSON, oldest first
    ig:{K}:done:<R>  string  reservation R was charged (queued tasks only; expires)
    ig:{K}:rec:<T>   string  task record of synchronous request T (JSON; expires)
    ig:keys                  set of live key ids (list_keys)
    ig:keys:known            set of every key id ever created (ledger queries and sweep: rows
                             and reservations outlive a deleted key)
    ig:hash:<sha256>         string  key hash -> key id (bearer lookup)
    ig:audit                 zset    admin actions as JSON, score = time (GET /admin/audit)
    ig:session:<sha256>      string  a web console session (JSON) by token hash; expires

The last three are not touched by scripts, so they may live in any slot. All times are the
`now` the caller passes; the store never reads the server clock. On a Redis Cluster
(`redis+cluster://`) the keys of one API key live on one node and different keys spread over
the nodes; `admit`/`settle` go through the lean client straight to the owning master (one round
trip, see resp.py), everything else through redis-py's `RedisCluster`.

`admit` first refunds this key's own expired reservations (at most 64), so a crashed request's
slot and credits come back on the key's next request, not only at the next global `sweep`.
`usage_summary` answers from the aggregates when the range is whole UTC days (or open) and
scans the ledger otherwise, so both paths give the same numbers.

Every connection/timeout error becomes `StoreUnavailable` (the gateway answers 503 and fails
closed). The pool reconnects on its own when Redis is back. Only connection errors are retried
(once, at once): a timed-out command may have run, so it is not blindly repeated; `admit` is
idempotent per reservation id and `settle` per reservation, so a caller's retry is safe.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import asdict
from importlib import resources
from typing import Any, cast

import orjson
from redis import exceptions as rexc
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript

from app.store.base import (
    CONCURRENCY_RETRY_S,
    RATE_WINDOW_S,
    Admission,
    ApiKey,
    AuditEntry,
    AuditQuery,
    ConsoleSession,
    GroupBy,
    ReservationState,
    SettleOutcome,
    StoreUnavailable,
    TaskRecord,
    UsageGroup,
    UsageQuery,
    UsageRecord,
    check_admit_args,
    check_key_changes,
    check_key_id,
    row_matches,
    utc_day,
)
from app.store.redis_url import parse_redis_url, redis_client
from app.store.resp import RespError, fast_client

# Errors that mean "the store is not reachable or not serving writes right now".
# Error replies that mean "not now" rather than "wrong": the gateway answers 503.
_UNAVAILABLE_REPLIES = frozenset(
    {"LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "BUSY", "NOREPLICAS"}
)

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    rexc.ConnectionError,  # includes BusyLoadingError (AOF still loading)
    rexc.TimeoutError,
    rexc.ReadOnlyError,  # a replica promoted/demoted under us
    rexc.MasterDownError,
    rexc.ClusterDownError,
    rexc.TryAgainError,
    rexc.SlotNotCoveredError,  # a cluster master is gone and nobody took its slots
    rexc.MasterDownError,
    OSError,  # includes the builtin TimeoutError
)

_STATES: dict[int, ReservationState] = {0: "gone", 1: "live", 2: "settled"}
_LEDGER_PAGE = 500
# aggregate field metric -> UsageGroup attribute
_AGG_METRICS = {
    "requests": "requests",
    "succeeded": "succeeded",
    "failed": "failed",
    "images": "images",
    "credits": "credits",
    "cost": "cost_usd",
    "estimated": "estimated",
}
_SCAN_BATCH = 200


def _script_text(name: str) -> str:
    lua = resources.files("app.store") / "lua"
    return (lua / "_lib.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


def _plain_script(name: str) -> str:
    return (resources.files("app.store") / "lua" / f"{name}.lua").read_text()


def _f(x: float) -> str:
    """A float as Redis/Lua should see it: repr round-trips exactly."""
    return repr(float(x))


def _key_to_fields(key: ApiKey) -> dict[str, str]:
    d: dict[str, str] = {
        "id": key.id,
        "name": key.name,
        "key_hash": key.key_hash,
        "prefix": key.prefix,
        "balance": str(int(key.balance)),
        "webhook_secret": key.webhook_secret,
        "created_at": _f(key.created_at),
        "disabled": "1" if key.disabled else "0",
    }
    if key.rpm is not None:
        d["rpm"] = str(key.rpm)
    if key.max_concurrency is not None:
        d["max_concurrency"] = str(key.max_concurrency)
    if key.models is not None:
        d["models"] = json.dumps(key.models)
    if key.expires_at is not None:
        d["expires_at"] = _f(key.expires_at)
    return d


def _change_to_field(name: str, value: Any) -> str:
    if name == "disabled":
        return "1" if value else "0"
    if name == "models":
        return json.dumps(value)
    if name == "expires_at":
        return _f(value)
    return str(value)


def _key_from_fields(d: dict[str, str]) -> ApiKey | None:
    if not d or "id" not in d:
        return None
    return ApiKey(
        id=d["id"],
        name=d.get("name", ""),
        key_hash=d.get("key_hash", ""),
        prefix=d.get("prefix", ""),
        balance=int(d.get("balance", "0")),
        webhook_secret=d.get("webhook_secret", ""),
        created_at=float(d.get("created_at", "0")),
        rpm=int(d["rpm"]) if "rpm" in d else None,
        max_concurrency=int(d["max_concurrency"]) if "max_concurrency" in d else None,
        models=json.loads(d["models"]) if "models" in d else None,
        expires_at=float(d["expires_at"]) if "expires_at" in d else None,
        disabled=d.get("disabled") == "1",
    )


def _record_json(record: UsageRecord, key_id: str, reservation_id: str) -> str:
    """The ledger row minus `credits`/`reserved`, which the settle script decides (compact
    JSON by orjson: this runs on every settle)."""
    return orjson.dumps(
        {
            "reservation_id": reservation_id,
            "key_id": key_id,
            "model": record.model,
            "size_tier": record.size_tier,
            "images": int(record.images),
            "task_id": record.task_id,
            "trace_id": record.trace_id,
            "status": record.status,
            "latency_ms": int(record.latency_ms),
            "created_at": float(record.created_at),
            "error_code": record.error_code,
            "channel": record.channel,
            "operation": record.operation,
            "usage": record.usage,
            "cost_usd": int(record.cost_usd),
            "cost_estimated": bool(record.cost_estimated),
        }
    ).decode()


def _parse_row(member: str) -> UsageRecord:
    credits, reserved, body = member.split(":", 2)
    d = json.loads(body)
    usage = d.get("usage")
    return UsageRecord(
        reservation_id=str(d["reservation_id"]),
        key_id=str(d["key_id"]),
        model=str(d.get("model", "")),
        size_tier=str(d.get("size_tier", "request")),
        images=int(d.get("images", 0)),
        credits=int(credits),
        reserved=int(reserved),
        task_id=str(d.get("task_id", "")),
        trace_id=str(d.get("trace_id", "")),
        status=d["status"],
        latency_ms=int(d.get("latency_ms", 0)),
        created_at=float(d["created_at"]),  # a string in rows written by Lua (exactness)
        error_code=d.get("error_code"),
        # rows written before these columns existed read with the defaults
        channel=str(d.get("channel") or ""),
        operation=str(d.get("operation") or "edit"),
        usage=usage if isinstance(usage, dict) else None,
        cost_usd=int(d.get("cost_usd") or 0),
        cost_estimated=bool(d.get("cost_estimated", True)),
    )


def _score_range(query: UsageQuery) -> tuple[str, str]:
    """(max, min) for ZREVRANGEBYSCORE: since inclusive, until exclusive."""
    hi = "(" + _f(query.until) if query.until is not None else "+inf"
    lo = _f(query.since) if query.since is not None else "-inf"
    return hi, lo


def _day_aligned(query: UsageQuery) -> bool:
    return all(t is None or float(t) % 86400 == 0 for t in (query.since, query.until))


def _agg_field(field: str) -> tuple[str, str, str, str, str] | None:
    """(day, channel, operation, model, metric) of an aggregate field, either layout."""
    if field.startswith("2\t"):
        parts = field.split("\t", 4)
        if len(parts) < 5:
            return None
        _, day, channel, operation, rest = parts
    else:  # written before channels: "day\tmodel\tmetric"
        day, rest, channel, operation = field[:10], field[11:], "", "edit"
    model, _, metric = rest.rpartition("\t")
    return day, channel, operation, model, metric


class RedisStore:
    """`Store` on Redis. Create one per process and share it; it is safe for concurrent use."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "ig",
        max_connections: int = 64,
        socket_timeout: float = 2.0,
        health_check_interval: int = 10,
    ) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("prefix must not contain braces (it would change the hash slot)")
        self._p = prefix
        target = parse_redis_url(url)
        self.cluster = target.cluster
        options: dict[str, Any] = {
            "max_connections": max_connections,
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_timeout,
            "health_check_interval": health_check_interval,
            "decode_responses": True,
        }
        if not target.cluster:
            # Blocking pool: a burst of requests waits briefly for a connection instead of
            # opening hundreds of sockets; waiting longer than the socket timeout counts as
            # unavailable.
            options.update(
                pool_class=BlockingConnectionPool,
                timeout=socket_timeout,
                retry=Retry(NoBackoff(), 1, supported_errors=(rexc.ConnectionError,)),
            )
        self._r: Any = redis_client(target, **options)
        self._admit = self._r.register_script(_script_text("admit"))
        self._settle = self._r.register_script(_script_text("settle"))
        self._sweep = self._r.register_script(_script_text("sweep"))
        self._extend = self._r.register_script(_plain_script("extend"))
        self._adjust = self._r.register_script(_plain_script("adjust"))
        self._create = self._r.register_script(_plain_script("create_key"))
        self._update = self._r.register_script(_plain_script("update_key"))
        self._delete = self._r.register_script(_plain_script("delete_key"))
        # The two calls every edit makes go through a lean pipelined client (see resp.py).
        self._fast = fast_client(url, timeout_s=socket_timeout)

    async def _hot(self, script: AsyncScript, *, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self._fast.evalsha(script.sha, str(script.script), keys, args)
        except (ConnectionError, TimeoutError, OSError) as exc:
            raise StoreUnavailable(f"redis unavailable: {exc}") from exc
        except RespError as exc:
            if str(exc).split(" ", 1)[0] in _UNAVAILABLE_REPLIES:
                raise StoreUnavailable(f"redis unavailable: {exc}") from exc
            raise rexc.ResponseError(str(exc)) from exc

    # --- key names

    def _k(self, key_id: str, part: str) -> str:
        return f"{self._p}:{{{key_id}}}:{part}"

    @property
    def _keys_live(self) -> str:
        return f"{self._p}:keys"

    @property
    def _keys_known(self) -> str:
        return f"{self._p}:keys:known"

    def _hash_index(self, key_hash: str) -> str:
        return f"{self._p}:hash:{key_hash}"

    async def _hgetall(self, name: str) -> dict[str, str]:
        return cast(dict[str, str], await self._r.hgetall(name))

    async def _members(self, name: str) -> list[str]:
        return sorted(str(m) for m in await self._r.smembers(name))

    @asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        try:
            yield
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"redis unavailable: {exc}") from exc
        except RespError as exc:  # the lean client's error replies
            if str(exc).split(" ", 1)[0] in _UNAVAILABLE_REPLIES:
                raise StoreUnavailable(f"redis unavailable: {exc}") from exc
            raise rexc.ResponseError(str(exc)) from exc

    # --- lifecycle

    async def ping(self) -> bool:
        try:
            return bool(await self._r.ping())
        except (rexc.RedisError, OSError):
            return False

    async def close(self) -> None:
        await self._fast.aclose()
        await self._r.aclose()
        if not self.cluster:
            await self._r.connection_pool.disconnect()

    # --- keys

    async def create_key(self, key: ApiKey) -> None:
        """Raises ValueError if the id or the secret's hash is already in use."""
        check_key_id(key.id)
        if key.balance < 0:
            raise ValueError("balance must be >= 0")
        fields = _key_to_fields(key)
        flat = [x for kv in fields.items() for x in kv]
        async with self._guard():
            # claim the hash first: a half-created key is then unreachable, never ambiguous
            index = self._hash_index(key.key_hash)
            if not await self._r.set(index, key.id, nx=True):
                holder = await self._r.get(index)
                if holder is not None:
                    owner = await self._r.hget(self._k(str(holder), "key"), "key_hash")
                    if owner == key.key_hash:
                        raise ValueError("a key with this secret already exists")
                # a stale entry left by an interrupted delete: take it over
                await self._r.set(index, key.id)
            if not await self._create(keys=[self._k(key.id, "key")], args=flat):
                await self._r.delete(self._hash_index(key.key_hash))
                raise ValueError(f"key id already exists: {key.id}")
            pipe = self._r.pipeline(transaction=False)
            pipe.sadd(self._keys_live, key.id)
            pipe.sadd(self._keys_known, key.id)
            await pipe.execute()

    async def _lean_hgetall(self, name: str) -> dict[str, str]:
        """HGETALL through the lean client on a cluster: bearer lookups come in bursts (every
        request after the key cache lapses), which redis-py's cluster client meets with one
        new connection each; the lean client pipelines them over a few."""
        if not self.cluster:
            return await self._hgetall(name)
        flat = await self._fast.call_keyed(name, "HGETALL", name)  # type: ignore[union-attr]
        return dict(zip(flat[::2], flat[1::2], strict=True))

    async def get_key(self, key_id: str) -> ApiKey | None:
        async with self._guard():
            return _key_from_fields(await self._lean_hgetall(self._k(key_id, "key")))

    async def find_key_by_hash(self, key_hash: str) -> ApiKey | None:
        index = self._hash_index(key_hash)
        async with self._guard():
            if self.cluster:
                key_id = await self._fast.call_keyed(index, "GET", index)  # type: ignore[union-attr]
            else:
                key_id = await self._r.get(index)
            if key_id is None:
                return None
            key = _key_from_fields(await self._lean_hgetall(self._k(str(key_id), "key")))
        return key if key is not None and key.key_hash == key_hash else None

    async def list_keys(self) -> list[ApiKey]:
        """All live keys, oldest first."""
        async with self._guard():
            ids = await self._members(self._keys_live)
            pipe = self._r.pipeline(transaction=False)
            for key_id in ids:
                pipe.hgetall(self._k(key_id, "key"))
            rows = await pipe.execute() if ids else []
        keys = [k for k in (_key_from_fields(r) for r in rows) if k is not None]
        return sorted(keys, key=lambda k: (k.created_at, k.id))

    async def update_key(self, key_id: str, changes: dict[str, Any]) -> ApiKey | None:
        """Change any of: name, rpm, max_concurrency, models, expires_at, disabled."""
        check_key_changes(changes)
        sets = {k: _change_to_field(k, v) for k, v in changes.items() if v is not None}
        dels = [k for k, v in changes.items() if v is None]
        args: list[str] = [str(len(sets))]
        for k, v in sets.items():
            args += [k, v]
        args += dels
        async with self._guard():
            flat = await self._update(keys=[self._k(key_id, "key")], args=args)
        return _key_from_fields(dict(zip(flat[::2], flat[1::2], strict=True)))

    async def delete_key(self, key_id: str) -> bool:
        async with self._guard():
            key_hash = await self._delete(
                keys=[self._k(key_id, "key"), self._k(key_id, "win")], args=[]
            )
            if not key_hash:
                return False
            pipe = self._r.pipeline(transaction=False)
            pipe.srem(self._keys_live, key_id)
            await pipe.execute()
            # drop the index only if it still names this key
            index = self._hash_index(key_hash)
            if await self._r.get(index) == key_id:
                await self._r.delete(index)
            return True

    async def adjust_balance(self, key_id: str, amount: int, note: str | None, now: float) -> int:
        """Add (or, negative, deduct) micro-credits; returns the new balance.

        Raises KeyError for an unknown key and ValueError if a deduction would go below zero.
        Every change is appended to the key's credit log (see `credit_log`)."""
        amount = int(amount)
        entry = json.dumps(
            {"amount": amount, "note": note, "created_at": float(now)}, separators=(",", ":")
        )
        async with self._guard():
            code, balance = await self._adjust(
                keys=[self._k(key_id, "key"), self._k(key_id, "credits")],
                args=[str(amount), entry[1:]],
            )
        if code == 1:
            raise KeyError(key_id)
        if code == 2:
            raise ValueError(f"balance {balance} cannot cover a deduction of {-amount}")
        return int(balance)

    async def credit_log(self, key_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The key's credit changes, newest first: amount, balance_after, note, created_at."""
        async with self._guard():
            raw = await self._r.lrange(self._k(key_id, "credits"), -limit, -1)
        return [json.loads(x) for x in reversed(raw)]

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
        """One EVALSHA: key valid -> rpm window -> concurrency -> balance -> reserve."""
        check_admit_args(cost, rpm, max_concurrency, hold_s)
        try:
            check_key_id(key_id)
        except ValueError:
            return Admission("invalid_token", 0, rpm, 0, 0.0)
        async with self._guard():
            status, balance, limit, remaining, reset_s, retry_s = await self._hot(
                self._admit,
                keys=[
                    self._k(key_id, "key"),
                    self._k(key_id, "win"),
                    self._k(key_id, "res"),
                    self._k(key_id, "exp"),
                    self._k(key_id, "ledger"),
                    self._k(key_id, "agg"),
                ],
                args=[
                    reservation_id,
                    str(int(cost)),
                    str(int(rpm)),
                    str(int(max_concurrency)),
                    _f(now),
                    _f(now + hold_s),
                    orjson.dumps(meta or {}).decode(),
                    key_id,
                    utc_day(now),
                    _f(RATE_WINDOW_S),
                    _f(CONCURRENCY_RETRY_S),
                ],
            )
        return Admission(
            status=status,
            balance=int(balance),
            limit=int(limit),
            remaining=int(remaining),
            reset_s=float(reset_s),
            retry_after_s=float(retry_s),
        )

    async def extend(self, reservation_id: str, key_id: str, expires_at: float) -> ReservationState:
        """Push a live reservation's expiry out; else say whether it was charged."""
        async with self._guard():
            state = await self._extend(
                keys=[
                    self._k(key_id, "res"),
                    self._k(key_id, "exp"),
                    self._k(key_id, f"done:{reservation_id}"),
                ],
                args=[reservation_id, _f(expires_at)],
            )
        return _STATES[int(state)]

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
        """One EVALSHA: charge min(charge, reserved), refund the rest, free the slot, ledger,
        and keep `task` -- all keys of the one `{key_id}` slot."""
        if charge < 0:
            raise ValueError("charge must be >= 0")
        async with self._guard():
            charged = await self._hot(
                self._settle,
                keys=[
                    self._k(key_id, "key"),
                    self._k(key_id, "res"),
                    self._k(key_id, "exp"),
                    self._k(key_id, "ledger"),
                    self._k(key_id, "agg"),
                    self._k(key_id, f"done:{reservation_id}"),
                    self._k(key_id, f"rec:{task.task_id if task else '-'}"),
                ],
                args=[
                    reservation_id,
                    str(int(charge)),
                    _record_json(record, key_id, reservation_id),
                    _f(record.created_at),
                    utc_day(record.created_at),
                    record.model,
                    "1" if record.status == "succeeded" else "0",
                    str(int(record.images)),
                    record.channel.replace("\t", " "),
                    record.operation.replace("\t", " "),
                    str(int(record.cost_usd)),
                    "1" if record.cost_estimated else "0",
                    str(max(0, int(remember_s))),
                    task.body if task else "",
                    str(max(1, int(task.ttl_s))) if task else "0",
                ],
            )
        n = int(charged)
        return "settled" if n >= 0 else "already_settled" if n == -2 else "gone"

    async def task_record(self, key_id: str, task_id: str) -> bytes | None:
        try:
            check_key_id(key_id)
        except ValueError:
            return None
        async with self._guard():
            raw = await self._r.get(self._k(key_id, f"rec:{task_id}"))
        return raw.encode() if isinstance(raw, str) else raw

    async def sweep(self, now: float) -> int:
        """Refund every reservation past its expiry. One script per key (a script may only
        touch one slot), pipelined in batches."""
        day = utc_day(now)
        total = 0

        def keys(key_id: str) -> list[str]:
            parts = ("key", "res", "exp", "ledger", "agg")
            return [self._k(key_id, p) for p in parts]

        async with self._guard():
            ids = await self._members(self._keys_known)
            for batch in _batches(ids, _SCAN_BATCH):
                if self.cluster:
                    # keys sit on different nodes: the lean client routes each script
                    counts = await asyncio.gather(*(
                        self._hot(self._sweep, keys=keys(k), args=[k, _f(now), day])
                        for k in batch
                    ))  # fmt: skip
                    total += sum(int(n) for n in counts)
                    continue
                pipe = self._r.pipeline(transaction=False)
                for key_id in batch:
                    await self._sweep(keys=keys(key_id), args=[key_id, _f(now), day], client=pipe)
                total += sum(int(n) for n in await pipe.execute())
        return total

    # --- ledger

    async def _ledger_ids(self, query: UsageQuery) -> list[str]:
        if query.key_id is not None:
            return [query.key_id]
        return await self._members(self._keys_known)

    async def _key_rows(
        self, key_id: str, query: UsageQuery, need: int | None
    ) -> list[UsageRecord]:
        """Newest-first rows of one key matching `query`, at most `need` (None: all)."""
        hi, lo = _score_range(query)
        out: list[UsageRecord] = []
        start = 0
        while need is None or len(out) < need:
            page = await self._r.zrevrangebyscore(
                self._k(key_id, "ledger"), hi, lo, start=start, num=_LEDGER_PAGE
            )
            for member in page:
                row = _parse_row(str(member))
                if row_matches(query, row):
                    out.append(row)
            if len(page) < _LEDGER_PAGE:
                break
            start += _LEDGER_PAGE
        return out if need is None else out[:need]

    async def _rows(self, query: UsageQuery, need: int | None) -> list[UsageRecord]:
        ids = await self._ledger_ids(query)
        sem = asyncio.Semaphore(8)

        async def one(key_id: str) -> list[UsageRecord]:
            async with sem:
                return await self._key_rows(key_id, query, need)

        per_key = await asyncio.gather(*(one(k) for k in ids))
        rows = [r for rs in per_key for r in rs]
        rows.sort(key=lambda r: r.created_at, reverse=True)
        return rows

    async def usage_records(
        self, query: UsageQuery, *, limit: int = 100, offset: int = 0
    ) -> list[UsageRecord]:
        """Newest first."""
        async with self._guard():
            rows = await self._rows(query, offset + limit)
        return rows[offset : offset + limit]

    async def usage_summary(self, query: UsageQuery, group_by: GroupBy) -> list[UsageGroup]:
        """From the per-key aggregates when the range is whole UTC days (the common case: no
        range at all), else by scanning the ledger rows in range. Sorted by group."""
        groups: dict[str, UsageGroup] = {}

        def bump(group: str, metric: str, n: int) -> None:
            g = groups.get(group)
            if g is None:
                g = groups[group] = UsageGroup(group=group)
            setattr(g, metric, getattr(g, metric) + n)

        async with self._guard():
            if not _day_aligned(query) or query.status is not None:
                for row in await self._rows(query, None):
                    group = _group_of(group_by, utc_day(row.created_at), row)
                    bump(group, "requests", 1)
                    bump(group, "succeeded" if row.status == "succeeded" else "failed", 1)
                    bump(group, "images", row.images)
                    bump(group, "credits", row.credits)
                    bump(group, "cost_usd", row.cost_usd)
                    bump(group, "estimated", int(row.cost_estimated))
                return sorted(groups.values(), key=lambda g: g.group)
            ids = await self._ledger_ids(query)
            first = utc_day(query.since) if query.since is not None else None
            stop = utc_day(query.until) if query.until is not None else None
            for batch in _batches(ids, _SCAN_BATCH):
                pipe = self._r.pipeline(transaction=False)
                for key_id in batch:
                    pipe.hgetall(self._k(key_id, "agg"))
                for key_id, agg in zip(batch, await pipe.execute(), strict=True):
                    for field, value in agg.items():
                        parsed = _agg_field(field)
                        if parsed is None:
                            continue
                        day, channel, operation, model, metric = parsed
                        metric = _AGG_METRICS.get(metric, "")
                        if not metric:
                            continue
                        if (
                            (query.model is not None and model != query.model)
                            or (query.channel is not None and channel != query.channel)
                            or (query.operation is not None and operation != query.operation)
                        ):
                            continue
                        if (first is not None and day < first) or (
                            stop is not None and day >= stop
                        ):
                            continue
                        group = _pick(group_by, day, key_id, model, channel, operation)
                        bump(group, metric, int(value))
        # a day with only zero counters cannot exist: every row bumps `requests`
        return sorted(groups.values(), key=lambda g: g.group)

    # --- audit log

    @property
    def _audit(self) -> str:
        return f"{self._p}:audit"

    async def add_audit(self, entry: AuditEntry) -> None:
        member = json.dumps(asdict(entry), separators=(",", ":"))  # unique: it carries the id
        async with self._guard():
            await self._r.zadd(self._audit, {member: float(entry.at)})

    async def audit_entries(
        self, query: AuditQuery, *, limit: int = 100, offset: int = 0
    ) -> list[AuditEntry]:
        """Newest first; filters other than time are applied while paging through the zset."""
        hi = "(" + _f(query.until) if query.until is not None else "+inf"
        lo = _f(query.since) if query.since is not None else "-inf"
        need = offset + limit
        out: list[AuditEntry] = []
        start = 0
        async with self._guard():
            while len(out) < need:
                page = await self._r.zrevrangebyscore(
                    self._audit, hi, lo, start=start, num=_LEDGER_PAGE
                )
                for member in page:
                    entry = AuditEntry(**json.loads(str(member)))
                    if query.matches(entry):
                        out.append(entry)
                if len(page) < _LEDGER_PAGE:
                    break
                start += _LEDGER_PAGE
        return out[offset:need]

    # --- console sessions

    def _session(self, id_hash: str) -> str:
        return f"{self._p}:session:{id_hash}"

    async def put_session(self, session: ConsoleSession, now: float) -> None:
        ttl_ms = int((session.expires_at - now) * 1000)
        if ttl_ms <= 0:
            return
        data = json.dumps(asdict(session), separators=(",", ":"))
        async with self._guard():
            await self._r.set(self._session(session.id_hash), data, px=ttl_ms)

    async def get_session(self, id_hash: str, now: float) -> ConsoleSession | None:
        async with self._guard():
            raw = await self._r.get(self._session(id_hash))
        if raw is None:
            return None
        session = ConsoleSession(**json.loads(raw))
        return session if session.expires_at > now else None

    async def delete_session(self, id_hash: str) -> bool:
        async with self._guard():
            return bool(await self._r.delete(self._session(id_hash)))


def _pick(group_by: str, day: str, key_id: str, model: str, channel: str, operation: str) -> str:
    by = {"day": day, "key": key_id, "model": model, "channel": channel, "operation": operation}
    if group_by not in by:
        raise ValueError(f"unknown group_by: {group_by!r}")
    return by[group_by]


def _group_of(group_by: GroupBy, day: str, row: UsageRecord) -> str:
    return _pick(group_by, day, row.key_id, row.model, row.channel, row.operation)


def _batches(items: list[str], size: int) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
