"""How a `Task` is kept in a Redis hash (bytes in, bytes out), shared by the Redis task store."""

from __future__ import annotations

from typing import Any

import orjson

from app.tasks.base import Task


def text(v: bytes | str | None) -> str | None:
    return v.decode() if isinstance(v, bytes) else v


def _f(v: bytes | None) -> float | None:
    return float(v) if v not in (None, b"") else None


def _json(v: bytes | None) -> Any:
    return orjson.loads(v) if v else None


def task_from_hash(h: dict[bytes, bytes]) -> Task:
    """A Task from its Redis hash (bytes keys and values, as read without decoding)."""
    return Task(
        id=h[b"id"].decode(),
        key_id=h[b"key_id"].decode(),
        trace_id=h[b"trace_id"].decode(),
        model=h[b"model"].decode(),
        created=float(h[b"created"]),
        status=h[b"status"].decode(),  # type: ignore[arg-type]
        started=_f(h.get(b"started")),
        finished=_f(h.get(b"finished")),
        callback_url=text(h.get(b"callback_url")) or None,
        result=_json(h.get(b"result")),
        error=_json(h.get(b"error")),
        delivered=h.get(b"delivered") == b"1",
        delivery_attempts=int(h.get(b"delivery_attempts", b"0")),
        undelivered=h.get(b"undelivered") == b"1",
        attempts=int(h.get(b"attempts", b"0")),
        last_delivery=_json(h.get(b"last_delivery")),
    )


def pairs_to_dict(flat: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))
