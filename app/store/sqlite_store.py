"""The embedded store: one SQLite file in the data dir, for a gateway on one machine.

Why it is shaped like this:

- WAL mode, so readers (usage queries, key lookups) never wait for the writer.
- Every metering operation is one `BEGIN IMMEDIATE` transaction: the write lock is taken
  before the first read, so two processes (or two store instances) admitting for the same key
  serialize, and the balance/window/slot checks and the reservation are one atomic step --
  the same guarantee the Redis store gets from Lua.
- sqlite3 is blocking, so each store owns one connection used only from its own single worker
  thread; the event loop awaits it and never blocks. One thread also means operations of one
  store never contend with each other for the lock, only with other processes.
- The semantics (sliding window, order of checks, lazy sweep in `admit`, ledger rows of
  expired reservations) mirror `redis_store` exactly; one contract suite runs against both.

Schema (created on open, idempotent; columns added later are added to older files by
`migrate`):

    keys          one row per API key; `balance` is the authoritative balance (CHECK >= 0)
    rate_window   the rpm sliding-window log: (key_id, ts, reservation_id)
    reservations  live reservations: amount, admitted_at, expires_at, meta JSON
    usage         the ledger, one row per metered request (incl. expired reservations)
    credit_log    every top-up / deduction with the balance after it
    audit         admin actions (actor, source, action, target, client, details JSON)
    console_sessions  web console sessions (JSON) by token hash, until their expiry
    settled       reservations that were charged (queued tasks only), until `expires_at`
    task_records  finished synchronous requests kept as tasks (JSON), until `expires_at`

Locked-database and I/O errors become `StoreUnavailable`, like a Redis outage.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from app.core.sqlite import enable_wal
from app.store.base import (
    CONCURRENCY_RETRY_S,
    EXPIRED_ERROR_CODE,
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
)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    key_hash        TEXT NOT NULL UNIQUE,
    prefix          TEXT NOT NULL,
    balance         INTEGER NOT NULL CHECK (balance >= 0),
    webhook_secret  TEXT NOT NULL,
    created_at      REAL NOT NULL,
    rpm             INTEGER,
    max_concurrency INTEGER,
    models          TEXT,
    expires_at      REAL,
    disabled        INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS rate_window (
    key_id          TEXT NOT NULL,
    ts              REAL NOT NULL,
    reservation_id  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rate_window_key_ts ON rate_window (key_id, ts);
CREATE TABLE IF NOT EXISTS reservations (
    id              TEXT PRIMARY KEY,
    key_id          TEXT NOT NULL,
    amount          INTEGER NOT NULL,
    admitted_at     REAL NOT NULL,
    expires_at      REAL NOT NULL,
    meta            TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reservations_key_exp ON reservations (key_id, expires_at);
CREATE INDEX IF NOT EXISTS reservations_exp ON reservations (expires_at);
CREATE TABLE IF NOT EXISTS usage (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    reservation_id  TEXT NOT NULL,
    key_id          TEXT NOT NULL,
    model           TEXT NOT NULL,
    size_tier       TEXT NOT NULL,
    images          INTEGER NOT NULL,
    credits         INTEGER NOT NULL,
    reserved        INTEGER NOT NULL,
    task_id         TEXT NOT NULL,
    trace_id        TEXT NOT NULL,
    status          TEXT NOT NULL,
    latency_ms      INTEGER NOT NULL,
    created_at      REAL NOT NULL,
    error_code      TEXT,
    channel         TEXT NOT NULL DEFAULT '',
    operation       TEXT NOT NULL DEFAULT 'edit',
    usage           TEXT,
    cost_usd        INTEGER NOT NULL DEFAULT 0,
    cost_estimated  INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS usage_created ON usage (created_at);
CREATE INDEX IF NOT EXISTS usage_key_created ON usage (key_id, created_at);
CREATE INDEX IF NOT EXISTS usage_reservation ON usage (reservation_id);
CREATE TABLE IF NOT EXISTS credit_log (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id          TEXT NOT NULL,
    amount          INTEGER NOT NULL,
    balance_after   INTEGER NOT NULL,
    note            TEXT,
    created_at      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS credit_log_key ON credit_log (key_id, seq);
CREATE TABLE IF NOT EXISTS audit (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL,
    at              REAL NOT NULL,
    actor           TEXT NOT NULL,
    source          TEXT NOT NULL,
    action          TEXT NOT NULL,
    target          TEXT NOT NULL,
    client          TEXT,
    details         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
CREATE TABLE IF NOT EXISTS console_sessions (
    id_hash         TEXT PRIMARY KEY,
    data            TEXT NOT NULL,
    expires_at      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS console_sessions_exp ON console_sessions (expires_at);
CREATE TABLE IF NOT EXISTS settled (
    id              TEXT PRIMARY KEY,
    key_id          TEXT NOT NULL,
    expires_at      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS settled_exp ON settled (expires_at);
CREATE TABLE IF NOT EXISTS task_records (
    id              TEXT PRIMARY KEY,
    key_id          TEXT NOT NULL,
    body            BLOB NOT NULL,
    expires_at      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS task_records_exp ON task_records (expires_at);
"""

# Columns added after the first release: (table, column, definition). A file created by an
# older version gets them on open; its old rows read the defaults (no channel, an edit, no
# reported usage, cost 0 estimated).
MIGRATIONS = (
    ("usage", "channel", "TEXT NOT NULL DEFAULT ''"),
    ("usage", "operation", "TEXT NOT NULL DEFAULT 'edit'"),
    ("usage", "usage", "TEXT"),
    ("usage", "cost_usd", "INTEGER NOT NULL DEFAULT 0"),
    ("usage", "cost_estimated", "INTEGER NOT NULL DEFAULT 1"),
)


def migrate(conn: sqlite3.Connection) -> None:
    """Add the columns an older file lacks (inside the caller's transaction)."""
    have: dict[str, set[str]] = {}
    for table, column, definition in MIGRATIONS:
        if table not in have:
            have[table] = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        if column not in have[table]:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
            have[table].add(column)


_KEY_COLUMNS = (
    "id, name, key_hash, prefix, balance, webhook_secret, created_at, rpm, max_concurrency,"
    " models, expires_at, disabled"
)
_USAGE_COLUMNS = (
    "reservation_id, key_id, model, size_tier, images, credits, reserved, task_id, trace_id,"
    " status, latency_ms, created_at, error_code, channel, operation, usage, cost_usd,"
    " cost_estimated"
)
_USAGE_INSERT = f"INSERT INTO usage ({_USAGE_COLUMNS}) VALUES ({','.join('?' * 18)})"
_GROUP_EXPR = {
    "day": "strftime('%Y-%m-%d', created_at, 'unixepoch')",
    "model": "model",
    "key": "key_id",
    "channel": "channel",
    "operation": "operation",
}
# Sweeping inside admit is bounded so one request never pays for a huge backlog.
_ADMIT_SWEEP_LIMIT = 64


def _key_from_row(row: tuple[Any, ...] | None) -> ApiKey | None:
    if row is None:
        return None
    return ApiKey(
        id=row[0],
        name=row[1],
        key_hash=row[2],
        prefix=row[3],
        balance=int(row[4]),
        webhook_secret=row[5],
        created_at=float(row[6]),
        rpm=row[7],
        max_concurrency=row[8],
        models=json.loads(row[9]) if row[9] is not None else None,
        expires_at=float(row[10]) if row[10] is not None else None,
        disabled=bool(row[11]),
    )


def _usage_from_row(row: tuple[Any, ...]) -> UsageRecord:
    return UsageRecord(
        reservation_id=row[0],
        key_id=row[1],
        model=row[2],
        size_tier=row[3],
        images=int(row[4]),
        credits=int(row[5]),
        reserved=int(row[6]),
        task_id=row[7],
        trace_id=row[8],
        status=row[9],
        latency_ms=int(row[10]),
        created_at=float(row[11]),
        error_code=row[12],
        channel=row[13],
        operation=row[14],
        usage=_usage_json(row[15]),
        cost_usd=int(row[16]),
        cost_estimated=bool(row[17]),
    )


def _usage_json(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _filter_sql(
    query: UsageQuery | AuditQuery, columns: tuple[str, ...], time_column: str
) -> tuple[str, list[Any]]:
    """WHERE clause and parameters: each of `columns` whose query field is set must be equal,
    and `since <= time_column < until`."""
    clauses: list[str] = []
    params: list[Any] = []
    for column in columns:
        value = getattr(query, column)
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if query.since is not None:
        clauses.append(f"{time_column} >= ?")
        params.append(float(query.since))
    if query.until is not None:
        clauses.append(f"{time_column} < ?")
        params.append(float(query.until))
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _where(query: UsageQuery) -> tuple[str, list[Any]]:
    return _filter_sql(query, ("key_id", "model", "channel", "operation", "status"), "created_at")


def _meta_str(meta: dict[str, Any], name: str, default: str) -> str:
    v = meta.get(name)
    return default if v is None else str(v)


def _sweep_rows(conn: sqlite3.Connection, rows: list[tuple[Any, ...]], now: float) -> int:
    """Refund and ledger expired reservations (rows: id, key_id, amount, admitted_at, meta).
    Runs inside the caller's transaction."""
    for rid, key_id, amount, admitted_at, meta_s in rows:
        conn.execute("DELETE FROM reservations WHERE id = ?", (rid,))
        if amount:
            conn.execute("UPDATE keys SET balance = balance + ? WHERE id = ?", (amount, key_id))
        try:
            meta = json.loads(meta_s)
        except ValueError:
            meta = {}
        if not isinstance(meta, dict):
            meta = {}
        conn.execute(
            _USAGE_INSERT,
            (
                rid,
                key_id,
                _meta_str(meta, "model", ""),
                _meta_str(meta, "size_tier", "request"),
                0,
                0,
                amount,
                _meta_str(meta, "task_id", ""),
                _meta_str(meta, "trace_id", ""),
                "expired",
                max(0, int((now - admitted_at) * 1000)),
                now,
                EXPIRED_ERROR_CODE,
                _meta_str(meta, "channel", ""),
                _meta_str(meta, "operation", "edit"),
                None,
                0,
                1,
            ),
        )
    return len(rows)


def _was_settled(conn: sqlite3.Connection, reservation_id: str, key_id: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM settled WHERE id = ? AND key_id = ?", (reservation_id, key_id)
    ).fetchone()
    return row is not None


class SQLiteStore:
    """`Store` on a SQLite file. Safe for concurrent use from one event loop, and for several
    processes (or instances) on the same file."""

    def __init__(
        self, path: Path | str, *, synchronous: str = "FULL", busy_timeout_s: float = 10.0
    ) -> None:
        """Open (creating if needed) the database and its schema.

        `synchronous=FULL` fsyncs every commit, so a settled charge survives even a power loss
        (about +0.1 ms per operation). "NORMAL" in WAL mode still survives any process crash
        and may lose only the last commits to a power cut; it is there for throughput tests.
        """
        if synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError(f"bad synchronous mode: {synchronous!r}")
        self.path = Path(path)
        self._synchronous = synchronous.upper()
        self._busy_timeout_s = busy_timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imagegate-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        try:
            self._executor.submit(self._open).result()
        except sqlite3.Error as exc:
            self._executor.shutdown(wait=False)
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from exc

    # --- plumbing (runs in the worker thread)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=True
        )
        enable_wal(conn, self._busy_timeout_s)
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_s * 1000)}")
        # schema creation is a write: one locked transaction, so processes opening at once agree
        try:
            conn.executescript("BEGIN IMMEDIATE;" + SCHEMA)
            migrate(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn in one BEGIN IMMEDIATE transaction (write lock held from the first read)."""
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # also when COMMIT itself failed: never leave it open
                conn.execute("ROLLBACK")
            raise
        return result

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable("store is closed")
        return self._conn

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StoreUnavailable("store is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.OperationalError as exc:  # locked past busy_timeout, I/O, disk full
            raise StoreUnavailable(f"sqlite unavailable: {exc}") from exc

    # --- lifecycle

    async def ping(self) -> bool:
        try:
            return bool(
                await self._run(lambda: self._connection().execute("SELECT 1").fetchone()[0])
            )
        except (StoreUnavailable, sqlite3.Error):
            return False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._executor, _close)
        self._executor.shutdown(wait=True)

    # --- keys

    async def create_key(self, key: ApiKey) -> None:
        """Raises ValueError if the id or the secret's hash is already in use."""
        check_key_id(key.id)
        if key.balance < 0:
            raise ValueError("balance must be >= 0")
        row = (
            key.id,
            key.name,
            key.key_hash,
            key.prefix,
            int(key.balance),
            key.webhook_secret,
            float(key.created_at),
            key.rpm,
            key.max_concurrency,
            json.dumps(key.models) if key.models is not None else None,
            float(key.expires_at) if key.expires_at is not None else None,
            int(key.disabled),
        )

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(f"INSERT INTO keys ({_KEY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", row)

        try:
            await self._run(self._tx, op)
        except sqlite3.IntegrityError as exc:
            raise ValueError(f"key id or secret already in use: {exc}") from exc

    async def get_key(self, key_id: str) -> ApiKey | None:
        def op() -> ApiKey | None:
            cur = self._connection().execute(
                f"SELECT {_KEY_COLUMNS} FROM keys WHERE id = ?", (key_id,)
            )
            return _key_from_row(cur.fetchone())

        return await self._run(op)

    async def find_key_by_hash(self, key_hash: str) -> ApiKey | None:
        def op() -> ApiKey | None:
            cur = self._connection().execute(
                f"SELECT {_KEY_COLUMNS} FROM keys WHERE key_hash = ?", (key_hash,)
            )
            return _key_from_row(cur.fetchone())

        return await self._run(op)

    async def list_keys(self) -> list[ApiKey]:
        """All keys, oldest first."""

        def op() -> list[ApiKey]:
            cur = self._connection().execute(
                f"SELECT {_KEY_COLUMNS} FROM keys ORDER BY created_at, id"
            )
            return [k for k in map(_key_from_row, cur.fetchall()) if k is not None]

        return await self._run(op)

    async def update_key(self, key_id: str, changes: dict[str, Any]) -> ApiKey | None:
        """Change any of: name, rpm, max_concurrency, models, expires_at, disabled."""
        check_key_changes(changes)
        cols: list[str] = []
        params: list[Any] = []
        for name, value in changes.items():
            cols.append(f"{name} = ?")  # names are checked against UPDATABLE_KEY_FIELDS
            if name == "models" and value is not None:
                value = json.dumps(value)
            elif name == "disabled":
                value = int(value)
            params.append(value)

        def op(conn: sqlite3.Connection) -> ApiKey | None:
            if cols:
                conn.execute(f"UPDATE keys SET {', '.join(cols)} WHERE id = ?", (*params, key_id))
            cur = conn.execute(f"SELECT {_KEY_COLUMNS} FROM keys WHERE id = ?", (key_id,))
            return _key_from_row(cur.fetchone())

        return await self._run(self._tx, op)

    async def delete_key(self, key_id: str) -> bool:
        """Revoke: the next admit answers invalid_token. Live reservations, ledger and credit
        log stay, so an in-flight request still settles into the ledger."""

        def op(conn: sqlite3.Connection) -> bool:
            gone = conn.execute("DELETE FROM keys WHERE id = ?", (key_id,)).rowcount > 0
            conn.execute("DELETE FROM rate_window WHERE key_id = ?", (key_id,))
            return gone

        return await self._run(self._tx, op)

    async def adjust_balance(self, key_id: str, amount: int, note: str | None, now: float) -> int:
        """Add (or, negative, deduct) micro-credits; returns the new balance.

        Raises KeyError for an unknown key and ValueError if a deduction would go below zero.
        Every change is appended to the credit log (see `credit_log`)."""
        amount = int(amount)

        def op(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT balance FROM keys WHERE id = ?", (key_id,)).fetchone()
            if row is None:
                raise KeyError(key_id)
            balance = int(row[0]) + amount
            if balance < 0:
                raise ValueError(f"balance {row[0]} cannot cover a deduction of {-amount}")
            conn.execute("UPDATE keys SET balance = ? WHERE id = ?", (balance, key_id))
            conn.execute(
                "INSERT INTO credit_log (key_id, amount, balance_after, note, created_at)"
                " VALUES (?,?,?,?,?)",
                (key_id, amount, balance, note, float(now)),
            )
            return balance

        return await self._run(self._tx, op)

    async def credit_log(self, key_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The key's credit changes, newest first: amount, balance_after, note, created_at."""

        def op() -> list[dict[str, Any]]:
            cur = self._connection().execute(
                "SELECT amount, balance_after, note, created_at FROM credit_log"
                " WHERE key_id = ? ORDER BY seq DESC LIMIT ?",
                (key_id, limit),
            )
            return [
                {"amount": a, "balance_after": b, "note": n, "created_at": t}
                for a, b, n, t in cur.fetchall()
            ]

        return await self._run(op)

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
        """One transaction: key valid -> rpm window -> concurrency -> balance -> reserve."""
        check_admit_args(cost, rpm, max_concurrency, hold_s)
        now = float(now)
        meta_s = json.dumps(meta or {}, separators=(",", ":"))
        window = RATE_WINDOW_S

        def op(conn: sqlite3.Connection) -> Admission:
            key = conn.execute(
                "SELECT disabled, expires_at FROM keys WHERE id = ?", (key_id,)
            ).fetchone()
            if key is None or key[0] or (key[1] is not None and key[1] <= now):
                return Admission("invalid_token", 0, rpm, 0, 0.0)
            # a crashed request's slot and credits come back on the key's next request
            expired = conn.execute(
                "SELECT id, key_id, amount, admitted_at, meta FROM reservations"
                " WHERE key_id = ? AND expires_at <= ? ORDER BY expires_at LIMIT ?",
                (key_id, now, _ADMIT_SWEEP_LIMIT),
            ).fetchall()
            _sweep_rows(conn, expired, now)
            conn.execute(
                "DELETE FROM rate_window WHERE key_id = ? AND ts <= ?", (key_id, now - window)
            )
            n, oldest, newest = conn.execute(
                "SELECT COUNT(*), MIN(ts), MAX(ts) FROM rate_window WHERE key_id = ?", (key_id,)
            ).fetchone()
            reset = max(0.0, newest + window - now) if n else 0.0
            balance = int(
                conn.execute("SELECT balance FROM keys WHERE id = ?", (key_id,)).fetchone()[0]
            )
            remaining = max(0, rpm - n)
            if conn.execute(
                "SELECT 1 FROM reservations WHERE id = ?", (reservation_id,)
            ).fetchone():
                return Admission("ok", balance, rpm, remaining, reset)  # a retry: once
            if n >= rpm:
                retry = max(0.0, oldest + window - now)
                return Admission("rate_limited", balance, rpm, 0, reset, retry)
            live = conn.execute(
                "SELECT COUNT(*) FROM reservations WHERE key_id = ?", (key_id,)
            ).fetchone()[0]
            if live >= max_concurrency:
                return Admission(
                    "concurrency_limited", balance, rpm, remaining, reset, CONCURRENCY_RETRY_S
                )
            if cost > balance:
                return Admission("insufficient_credits", balance, rpm, remaining, reset)
            conn.execute(
                "INSERT INTO rate_window (key_id, ts, reservation_id) VALUES (?,?,?)",
                (key_id, now, reservation_id),
            )
            conn.execute(
                "INSERT INTO reservations (id, key_id, amount, admitted_at, expires_at, meta)"
                " VALUES (?,?,?,?,?,?)",
                (reservation_id, key_id, int(cost), now, now + hold_s, meta_s),
            )
            if cost:
                conn.execute("UPDATE keys SET balance = balance - ? WHERE id = ?", (cost, key_id))
            return Admission("ok", balance - cost, rpm, remaining - 1, window)

        return await self._run(self._tx, op)

    async def extend(self, reservation_id: str, key_id: str, expires_at: float) -> ReservationState:
        """Push a live reservation's expiry out; else say whether it was charged."""

        def op(conn: sqlite3.Connection) -> ReservationState:
            cur = conn.execute(
                "UPDATE reservations SET expires_at = ? WHERE id = ? AND key_id = ?",
                (float(expires_at), reservation_id, key_id),
            )
            if cur.rowcount > 0:
                return "live"
            return "settled" if _was_settled(conn, reservation_id, key_id) else "gone"

        return await self._run(self._tx, op)

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
        """One transaction: charge min(charge, reserved), refund the rest, free the slot, ledger
        the row and keep `task` -- once (the DELETE of the reservation is the idempotency
        check)."""
        if charge < 0:
            raise ValueError("charge must be >= 0")
        usage_s = (
            json.dumps(record.usage, separators=(",", ":")) if record.usage is not None else None
        )

        def op(conn: sqlite3.Connection) -> SettleOutcome:
            row = conn.execute(
                "DELETE FROM reservations WHERE id = ? AND key_id = ? RETURNING amount",
                (reservation_id, key_id),
            ).fetchone()
            if row is None:
                return "already_settled" if _was_settled(conn, reservation_id, key_id) else "gone"
            reserved = int(row[0])
            charged = min(int(charge), reserved)
            if reserved > charged:
                conn.execute(
                    "UPDATE keys SET balance = balance + ? WHERE id = ?",
                    (reserved - charged, key_id),
                )
            conn.execute(
                _USAGE_INSERT,
                (
                    reservation_id,
                    key_id,
                    record.model,
                    record.size_tier,
                    int(record.images),
                    charged,
                    reserved,
                    record.task_id,
                    record.trace_id,
                    record.status,
                    int(record.latency_ms),
                    float(record.created_at),
                    record.error_code,
                    record.channel,
                    record.operation,
                    usage_s,
                    int(record.cost_usd),
                    int(record.cost_estimated),
                ),
            )
            now = float(record.created_at)
            if record.status == "succeeded" and remember_s > 0:
                conn.execute(
                    "INSERT OR REPLACE INTO settled (id, key_id, expires_at) VALUES (?,?,?)",
                    (reservation_id, key_id, now + remember_s),
                )
            if task is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO task_records (id, key_id, body, expires_at)"
                    " VALUES (?,?,?,?)",
                    (task.task_id, key_id, task.body, now + task.ttl_s),
                )
            return "settled"

        return await self._run(self._tx, op)

    async def task_record(self, key_id: str, task_id: str) -> bytes | None:
        def op() -> bytes | None:
            row = (
                self._connection()
                .execute(
                    "SELECT body FROM task_records WHERE id = ? AND key_id = ?",
                    (task_id, key_id),
                )
                .fetchone()
            )
            return bytes(row[0]) if row else None

        return await self._run(op)

    async def sweep(self, now: float) -> int:
        """Refund every reservation past its expiry, free its slot, ledger it as 'expired'."""
        now = float(now)

        def op(conn: sqlite3.Connection) -> int:
            rows = conn.execute(
                "SELECT id, key_id, amount, admitted_at, meta FROM reservations"
                " WHERE expires_at <= ? ORDER BY expires_at",
                (now,),
            ).fetchall()
            conn.execute("DELETE FROM settled WHERE expires_at <= ?", (now,))
            conn.execute("DELETE FROM task_records WHERE expires_at <= ?", (now,))
            return _sweep_rows(conn, rows, now)

        return await self._run(self._tx, op)

    # --- ledger

    async def usage_records(
        self, query: UsageQuery, *, limit: int = 100, offset: int = 0
    ) -> list[UsageRecord]:
        """Newest first."""
        where, params = _where(query)
        sql = (
            f"SELECT {_USAGE_COLUMNS} FROM usage{where}"
            " ORDER BY created_at DESC, seq DESC LIMIT ? OFFSET ?"
        )

        def op() -> list[UsageRecord]:
            cur = self._connection().execute(sql, (*params, int(limit), int(offset)))
            return [_usage_from_row(r) for r in cur.fetchall()]

        return await self._run(op)

    async def usage_summary(self, query: UsageQuery, group_by: GroupBy) -> list[UsageGroup]:
        """Grouped by UTC day, model or key; sorted by group."""
        expr = _GROUP_EXPR.get(group_by)
        if expr is None:
            raise ValueError(f"unknown group_by: {group_by!r}")
        where, params = _where(query)
        sql = (
            f"SELECT {expr} AS g, COUNT(*), SUM(status = 'succeeded'), SUM(status != 'succeeded'),"
            f" SUM(images), SUM(credits), SUM(cost_usd), SUM(cost_estimated)"
            f" FROM usage{where} GROUP BY g ORDER BY g"
        )

        def op() -> list[UsageGroup]:
            cur = self._connection().execute(sql, params)
            return [
                UsageGroup(str(g), int(r), int(s), int(f), int(i), int(c), int(u), int(e))
                for g, r, s, f, i, c, u, e in cur.fetchall()
            ]

        return await self._run(op)

    # --- audit log

    async def add_audit(self, entry: AuditEntry) -> None:
        row = (
            entry.id,
            float(entry.at),
            entry.actor,
            entry.source,
            entry.action,
            entry.target,
            entry.client,
            json.dumps(entry.details, separators=(",", ":")),
        )

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO audit (id, at, actor, source, action, target, client, details)"
                " VALUES (?,?,?,?,?,?,?,?)",
                row,
            )

        await self._run(self._tx, op)

    async def audit_entries(
        self, query: AuditQuery, *, limit: int = 100, offset: int = 0
    ) -> list[AuditEntry]:
        """Newest first."""
        where, params = _filter_sql(query, ("actor", "source", "action", "target"), "at")
        sql = (
            "SELECT id, at, actor, source, action, target, client, details FROM audit"
            f"{where} ORDER BY at DESC, seq DESC LIMIT ? OFFSET ?"
        )

        def op() -> list[AuditEntry]:
            cur = self._connection().execute(sql, (*params, int(limit), int(offset)))
            return [
                AuditEntry(i, float(at), a, src, act, t, c, json.loads(d))
                for i, at, a, src, act, t, c, d in cur.fetchall()
            ]

        return await self._run(op)

    # --- console sessions

    async def put_session(self, session: ConsoleSession, now: float) -> None:
        data = json.dumps(asdict(session), separators=(",", ":"))

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM console_sessions WHERE expires_at <= ?", (now,))
            conn.execute(
                "INSERT OR REPLACE INTO console_sessions (id_hash, data, expires_at)"
                " VALUES (?, ?, ?)",
                (session.id_hash, data, session.expires_at),
            )

        await self._run(self._tx, op)

    async def get_session(self, id_hash: str, now: float) -> ConsoleSession | None:
        def op() -> ConsoleSession | None:
            row = (
                self._connection()
                .execute(
                    "SELECT data FROM console_sessions WHERE id_hash = ? AND expires_at > ?",
                    (id_hash, now),
                )
                .fetchone()
            )
            return ConsoleSession(**json.loads(row[0])) if row else None

        return await self._run(op)

    async def delete_session(self, id_hash: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("DELETE FROM console_sessions WHERE id_hash = ?", (id_hash,))
            return cur.rowcount > 0

        return await self._run(self._tx, op)
