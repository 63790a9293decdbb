"""What an upstream's answer says about waiting: Retry-After headers and Gemini's RetryInfo."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import orjson

_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)s\s*$")


def _seconds(value: str | None) -> float | None:
    """A positive number of seconds; `-1`, `0` and garbage are "unknown" (seen on Azure)."""
    if not value:
        return None
    try:
        n = float(value)
    except ValueError:
        return None
    return n if n > 0 else None


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the upstream asked to wait: `retry-after-ms`, else `retry-after` (secs or date)."""
    ms = _seconds(headers.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000.0
    value = headers.get("retry-after")
    secs = _seconds(value)
    if secs is not None or not value:
        return secs
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    wait = when.timestamp() - (time.time() if now is None else now)
    return wait if wait > 0 else None


def _details(body: bytes) -> list[dict[str, Any]]:
    try:
        parsed = orjson.loads(body)
    except ValueError:
        return []
    err = parsed.get("error") if isinstance(parsed, dict) else None
    details = err.get("details") if isinstance(err, dict) else None
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def retry_hint(headers: Mapping[str, str], body: bytes) -> float | None:
    """Headers first, then a Gemini `google.rpc.RetryInfo.retryDelay` ("26s") in the body."""
    hinted = parse_retry_after(headers)
    if hinted is not None:
        return hinted
    for d in _details(body):
        if str(d.get("@type", "")).endswith("google.rpc.RetryInfo"):
            m = _DURATION.match(str(d.get("retryDelay", "")))
            if m:
                return float(m.group(1))
    return None


def daily_quota(body: bytes) -> bool:
    """A Gemini quota violation per day: waiting seconds will not help until the daily reset."""
    for d in _details(body):
        if str(d.get("@type", "")).endswith("google.rpc.QuotaFailure"):
            for v in d.get("violations") or []:
                if isinstance(v, dict) and "PerDay" in str(v.get("quotaId", "")):
                    return True
    return False
