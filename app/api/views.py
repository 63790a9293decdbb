"""How keys and usage look on the wire: decimal credits outside, micro-credits inside."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app.core.errors import bad_request
from app.core.money import credits_json
from app.store.base import ApiKey, UsageGroup, UsageRecord


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


#: Latest time accepted (9999-12-31T23:59:59Z): what `iso` and every platform can show.
MAX_TIME = 253402300799.0


def parse_time(value: Any, param: str) -> float | None:
    """Unix seconds or ISO 8601 (a date alone means midnight UTC), between 1970 and 9999."""
    if value is None or value == "":
        return None
    ts: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        ts = float(value)
    elif isinstance(value, str):
        try:
            ts = float(value)
        except ValueError:
            try:
                dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise bad_request(f"{param} must be unix seconds or ISO 8601", param) from None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            ts = dt.timestamp()
    if ts is None:
        raise bad_request(f"{param} must be unix seconds or ISO 8601", param)
    if not 0 <= ts <= MAX_TIME:  # also refuses NaN and infinities
        raise bad_request(f"{param} must be a time between 1970 and 9999", param)
    return ts


def key_view(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "balance": credits_json(key.balance),
        "rpm": key.rpm,
        "max_concurrency": key.max_concurrency,
        "models": key.models,
        "expires_at": iso(key.expires_at),
        "disabled": key.disabled,
        "created_at": iso(key.created_at),
    }


def record_view(r: UsageRecord) -> dict[str, Any]:
    return {
        "created_at": iso(r.created_at),
        "key_id": r.key_id,
        "model": r.model,
        "size_tier": r.size_tier,
        "images": r.images,
        "credits": credits_json(r.credits),
        "reserved": credits_json(r.reserved),
        "status": r.status,
        "error_code": r.error_code,
        "task_id": r.task_id,
        "trace_id": r.trace_id,
        "latency_ms": r.latency_ms,
    }


def group_view(g: UsageGroup) -> dict[str, Any]:
    return {
        "group": g.group,
        "requests": g.requests,
        "succeeded": g.succeeded,
        "failed": g.failed,
        "images": g.images,
        "credits": credits_json(g.credits),
    }


RECORD_COLUMNS = [
    "created_at", "key_id", "model", "size_tier", "images", "credits", "reserved", "status",
    "error_code", "task_id", "trace_id", "latency_ms",
]  # fmt: skip
