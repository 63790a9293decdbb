"""How keys and usage look on the wire: decimal credits outside, micro-credits inside.

Each view function has a pydantic model of its output beside it: the models only document the
responses in OpenAPI (the handlers send the dicts as they are), and the schemathesis test
checks every admin response against them, so a field added to a view must be added to its
model.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from app.core.errors import bad_request
from app.core.money import credits_json
from app.store.base import ApiKey, AuditEntry, UsageGroup, UsageRecord


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


#: Largest `offset` a paged admin list accepts: both stores keep offsets in 64-bit integers, and
#: 2**53 - 1 is the largest a JSON client reads exactly. Past the end a page is simply empty.
MAX_OFFSET = 2**53 - 1

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


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(_Wire):
    code: str
    message: str
    type: str
    param: str | None


class ErrorEnvelope(_Wire):
    """Every error, whatever the endpoint (docs/API.md, "Errors")."""

    success: Literal[False]
    error: ErrorDetail
    trace_id: str


class KeyView(_Wire):
    id: str
    name: str
    prefix: str
    balance: float
    rpm: int | None
    max_concurrency: int | None
    models: list[str] | None
    expires_at: str | None
    disabled: bool
    created_at: str | None


class KeyCreated(KeyView):
    """The key as created: the only response that shows the secret and the webhook secret."""

    key: str
    webhook_secret: str


class KeyList(_Wire):
    data: list[KeyView]


class KeyDeleted(_Wire):
    id: str
    deleted: bool


class KeyBalance(_Wire):
    id: str
    balance: float


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


class RecordView(_Wire):
    created_at: str | None
    key_id: str
    model: str
    size_tier: str
    images: int
    credits: float
    reserved: float
    status: str
    error_code: str | None
    task_id: str
    trace_id: str
    latency_ms: int
    channel: str
    operation: str
    cost_usd: float
    cost_estimated: bool
    usage: dict[str, Any] | None


class RecordPage(_Wire):
    data: list[RecordView]
    limit: int
    offset: int
    next_offset: int | None


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
        "channel": r.channel,
        "operation": r.operation,
        # what the upstream charged, USD (exact to the micro-dollar; same scale as credits)
        "cost_usd": credits_json(r.cost_usd),
        "cost_estimated": r.cost_estimated,
        "usage": r.usage,
    }


def record_csv_row(r: UsageRecord) -> dict[str, Any]:
    """A ledger row for CSV: the JSON view with `usage` as compact JSON text."""
    row = record_view(r)
    row["usage"] = "" if r.usage is None else json.dumps(r.usage, separators=(",", ":"))
    return row


class GroupView(_Wire):
    group: str
    requests: int
    succeeded: int
    failed: int
    images: int
    credits: float
    cost_usd: float
    estimated: int


class UsageSummary(_Wire):
    group_by: str
    data: list[GroupView]


def group_view(g: UsageGroup) -> dict[str, Any]:
    return {
        "group": g.group,
        "requests": g.requests,
        "succeeded": g.succeeded,
        "failed": g.failed,
        "images": g.images,
        "credits": credits_json(g.credits),
        "cost_usd": credits_json(g.cost_usd),
        "estimated": g.estimated,
    }


RECORD_COLUMNS = [
    "created_at", "key_id", "model", "size_tier", "images", "credits", "reserved", "status",
    "error_code", "task_id", "trace_id", "latency_ms", "channel", "operation", "cost_usd",
    "cost_estimated", "usage",
]  # fmt: skip


class AuditView(_Wire):
    id: str
    at: str | None
    actor: str
    source: str
    action: str
    target: str
    client: str | None
    details: dict[str, Any] | None


class AuditPage(_Wire):
    data: list[AuditView]
    limit: int
    offset: int
    next_offset: int | None


def audit_view(e: AuditEntry) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": iso(e.at),
        "actor": e.actor,
        "source": e.source,
        "action": e.action,
        "target": e.target,
        "client": e.client,
        "details": e.details,
    }
