"""The small value types the edit flow passes between its modules and to the routes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from app.adapters.base import Adapter
from app.domain.edit import EditRequest
from app.domain.pricing import Quote
from app.media.spool import Spool


@dataclass(slots=True)
class EditContext:
    """Per-request facts from the HTTP layer."""

    trace_id: str
    base_url: str  # where result URLs point (IMAGEGATE_PUBLIC_BASE_URL or the request's own)
    started: float = field(default_factory=time.perf_counter)
    # Where this request's large image bytes go (app/media/spool.py); the route owns and
    # closes it after the response. None: everything stays in memory (queued tasks' runs).
    spool: Spool | None = None


@dataclass(slots=True)
class EditReply:
    body: dict[str, Any] | None
    headers: dict[str, str]
    events: AsyncIterator[bytes] | None = None  # server-sent events for stream=true
    raw: bytes | None = None  # an idempotent replay: the first answer's exact bytes
    trace_id: str | None = None  # a replay answers under the first request's trace id


@dataclass(slots=True)
class Prepared:
    """A request that passed every check and has a price: ready to admit and run."""

    adapter: Adapter
    req: EditRequest
    quote: Quote
    response_format: str
