"""Stores: where keys, balances, rate-limit state and the usage ledger live.

`open_store` picks the implementation from the settings: Redis when a URL is configured (many
gateway replicas can share it), else the embedded SQLite file in the data dir (one machine,
nothing else to run).
"""

from __future__ import annotations

from pathlib import Path

from app.store.base import (
    Admission,
    ApiKey,
    Reservation,
    Store,
    StoreUnavailable,
    UsageGroup,
    UsageQuery,
    UsageRecord,
    hash_secret,
)

SQLITE_FILENAME = "imagegate.db"

__all__ = [
    "SQLITE_FILENAME",
    "Admission",
    "ApiKey",
    "Reservation",
    "Store",
    "StoreUnavailable",
    "UsageGroup",
    "UsageQuery",
    "UsageRecord",
    "hash_secret",
    "open_store",
]


def open_store(redis_url: str | None, data_dir: Path) -> Store:
    """Redis when a URL is given, else SQLite at `data_dir/imagegate.db` (created if needed).

    Neither connects lazily in a way that hides a bad setting for long: the SQLite file and
    schema are created here; a Redis URL is parsed here and connected on first use (a Redis
    that is down makes operations raise `StoreUnavailable`, and `ping()` answer False).
    """
    if redis_url:
        from app.store.redis_store import RedisStore

        return RedisStore(redis_url)
    from app.store.sqlite_store import SQLiteStore

    return SQLiteStore(Path(data_dir) / SQLITE_FILENAME)
