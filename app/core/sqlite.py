"""Opening SQLite files that several processes share (the embedded store, the task table)."""

from __future__ import annotations

import random
import sqlite3
import time


def enable_wal(conn: sqlite3.Connection, timeout_s: float) -> None:
    """Put the file in WAL mode, retrying while another process holds it.

    Switching the journal mode needs a moment of exclusive access, and SQLite answers
    "database is locked" at once there instead of waiting on the busy handler, so processes
    that open a new file together (`imagegate serve --workers 2`, two CLI calls) must retry.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if ("locked" not in text and "busy" not in text) or time.monotonic() > deadline:
                raise
            time.sleep(0.01 + random.random() * 0.04)
