"""What each console page shows, read from the gateway's store and config.

Reads only: every change the console makes is a call of the admin API from the browser (see
`middleware.py`). Views reuse the admin API's wire views (`app/api/views.py`), so a number on a
page is the number the API and the CSV give.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from app.api.views import audit_view, group_view, iso, key_view, record_view
from app.core.money import credits_json
from app.gateway import Gateway
from app.store.base import AuditQuery, GroupBy, UsageQuery
from app.tasks.records import find_task

DAYS = 30
PAGE = 50


def day_start(ts: float) -> float:
    d = datetime.fromtimestamp(ts, UTC)
    return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()


def last_days(now: float, days: int = DAYS) -> list[str]:
    first = datetime.fromtimestamp(day_start(now), UTC) - timedelta(days=days - 1)
    return [(first + timedelta(days=i)).strftime("%Y-%m-%d") for i in range(days)]


def day_series(groups: list[dict[str, Any]], days: list[str]) -> dict[str, Any]:
    """Per-day columns for the charts, zeros for days without traffic."""
    by_day = {g["group"]: g for g in groups}
    rows = [by_day.get(d, {}) for d in days]
    t = [datetime.strptime(d, "%Y-%m-%d").replace(tzinfo=UTC).timestamp() for d in days]
    requests = [int(r.get("requests", 0)) for r in rows]
    failed = [int(r.get("failed", 0)) for r in rows]
    series: dict[str, Any] = {
        "t": t,
        "requests": requests,
        "images": [int(r.get("images", 0)) for r in rows],
        "credits": [float(r.get("credits", 0)) for r in rows],
        "error_rate": [
            round(100.0 * f / n, 2) if n else 0.0 for f, n in zip(failed, requests, strict=True)
        ],
    }
    series["cost_usd"] = [float(r.get("cost_usd") or 0) for r in rows]
    return series


async def key_names(gw: Gateway) -> dict[str, str]:
    return {k.id: k.name for k in await gw.keys.list()}


async def overview(gw: Gateway) -> dict[str, Any]:
    now = time.time()
    days = last_days(now)
    q = UsageQuery(since=day_start(now) - (DAYS - 1) * 86400)
    days_raw = await gw.store.usage_summary(q, "day")
    per_day = [group_view(g) for g in days_raw]
    per_key = [group_view(g) for g in await gw.store.usage_summary(q, "key")]
    per_model = [group_view(g) for g in await gw.store.usage_summary(q, "model")]
    names = await key_names(gw)
    for g in per_key:
        g["name"] = names.get(g["group"], "(revoked)")
    top = sorted(per_key, key=lambda g: (-g["credits"], -g["requests"]))[:5]
    top_models = sorted(per_model, key=lambda g: (-g["requests"], g["group"]))[:5]
    totals = {
        "requests": sum(g["requests"] for g in per_day),
        "images": sum(g["images"] for g in per_day),
        "credits": credits_json(sum(g.credits for g in days_raw)),
        "failed": sum(g["failed"] for g in per_day),
        "cost_usd": credits_json(sum(g.cost_usd for g in days_raw)),
        "estimated": sum(g.estimated for g in days_raw),
    }
    return {
        "series": day_series(per_day, days),
        "totals": totals,
        "top_keys": top,
        "top_models": top_models,
        "channels": channels(gw),
        "first_day": days[0],
        "last_day": days[-1],
    }


async def keys(gw: Gateway) -> list[dict[str, Any]]:
    out = []
    for k in await gw.keys.list():
        view = key_view(k)
        last = await gw.store.usage_records(UsageQuery(key_id=k.id), limit=1)
        view["last_used"] = iso(last[0].created_at) if last else None
        view["rpm_effective"] = k.rpm or gw.config.defaults.rpm
        view["concurrency_effective"] = k.max_concurrency or gw.config.defaults.max_concurrency
        view["status"] = status_of(k.disabled, k.expires_at)
        out.append(view)
    return out


def status_of(disabled: bool, expires_at: float | None) -> str:
    if disabled:
        return "disabled"
    if expires_at is not None and expires_at <= time.time():
        return "expired"
    return "active"


@dataclass(slots=True)
class Filters:
    """The filters of the Usage, Records and Tasks pages, as typed into their forms."""

    key_id: str = ""
    model: str = ""
    channel: str = ""
    operation: str = ""  # "edit" | "generate" | "" (both)
    status: str = ""
    since: str = ""  # YYYY-MM-DD, inclusive
    until: str = ""  # YYYY-MM-DD, inclusive (the day is included)
    page: int = 1

    def query(self) -> UsageQuery:
        return UsageQuery(
            key_id=self.key_id or None,
            model=self.model or None,
            channel=self.channel or None,
            operation=self.operation or None,
            status=self.status or None,
            since=_day(self.since),
            until=(_day(self.until) or 0) + 86400 if self.until else None,
        )

    def api_params(self) -> dict[str, str]:
        """The same range as query parameters of /admin/usage/records."""
        out: dict[str, str] = {}
        q = self.query()
        if q.key_id:
            out["key_id"] = q.key_id
        if q.model:
            out["model"] = q.model
        if q.channel:
            out["channel"] = q.channel
        if q.operation:
            out["operation"] = q.operation
        if q.status:
            out["status"] = q.status
        if q.since is not None:
            out["since"] = str(int(q.since))
        if q.until is not None:
            out["until"] = str(int(q.until))
        return out


def _day(text: str) -> float | None:
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


async def usage(gw: Gateway, f: Filters, group_by: GroupBy) -> dict[str, Any]:
    raw = await gw.store.usage_summary(f.query(), group_by)
    groups = [group_view(g) for g in raw]
    if group_by == "key":
        names = await key_names(gw)
        for g in groups:
            g["label"] = f"{names.get(g['group'], '(revoked)')} ({g['group']})"
    else:
        for g in groups:
            g["label"] = g["group"]
    series = None
    if group_by == "day" and groups:
        first = f.since or groups[0]["group"]
        last = f.until or groups[-1]["group"]
        span = max(1, (_day(last) or 0) - (_day(first) or 0)) // 86400 + 1
        series = day_series(groups, last_days((_day(last) or 0) + 1, int(min(span, 366))))
    peak = max((g["credits"] for g in groups), default=0) or 1
    for g in groups:
        g["bar"] = round(100 * g["credits"] / peak, 1)
        g["error_rate"] = round(100 * g["failed"] / g["requests"], 1) if g["requests"] else 0.0
    totals = {
        "requests": sum(g["requests"] for g in groups),
        "succeeded": sum(g["succeeded"] for g in groups),
        "failed": sum(g["failed"] for g in groups),
        "images": sum(g["images"] for g in groups),
        "credits": credits_json(sum(g.credits for g in raw)),
        "cost_usd": credits_json(sum(g.cost_usd for g in raw)),
        "estimated": sum(g.estimated for g in raw),
    }
    return {"groups": groups, "series": series, "totals": totals}


async def records(gw: Gateway, f: Filters) -> dict[str, Any]:
    offset = (f.page - 1) * PAGE
    rows = await gw.store.usage_records(f.query(), limit=PAGE + 1, offset=offset)
    more = len(rows) > PAGE
    return {"rows": [record_view(r) for r in rows[:PAGE]], "more": more}


async def tasks(gw: Gateway, f: Filters) -> dict[str, Any]:
    """Recent tasks: each metered request is one task; the ledger lists them newest first."""
    page = await records(gw, f)
    out = []
    for row in page["rows"]:
        task_id, key_id = row["task_id"], row["key_id"]
        task = await find_task(gw.tasks, gw.store, key_id, task_id) if task_id else None
        item = dict(row)
        item["task"] = task_view(task) if task is not None else None
        out.append(item)
    return {"rows": out, "more": page["more"]}


async def task(gw: Gateway, task_id: str, key_id: str | None) -> dict[str, Any] | None:
    """A task by id: a queued one, or (with its key, which the console's links carry) a
    synchronous request's record."""
    if key_id:
        found = await find_task(gw.tasks, gw.store, key_id, task_id)
    else:
        found = await gw.tasks.get(task_id)
    return task_view(found) if found is not None else None


def task_view(task: Any) -> dict[str, Any]:
    started, finished = task.started, task.finished
    view = task.to_public()
    view.update(
        key_id=task.key_id,
        callback_url=task.callback_url,
        callback_state=task.callback_state(),
        delivery_attempts=task.delivery_attempts,
        last_delivery=task.last_delivery,
        attempts=task.attempts,
        created_at=iso(task.created),
        started_at=iso(started),
        finished_at=iso(finished),
        queued_ms=round((started - task.created) * 1000) if started else None,
        run_ms=round((finished - started) * 1000) if started and finished else None,
        total_ms=round((finished - task.created) * 1000) if finished else None,
        images=_images(task.result),
    )
    if task.last_delivery and task.last_delivery.get("at"):
        view["last_delivery_at"] = iso(float(task.last_delivery["at"]))
    return view


def _images(result: dict[str, Any] | None) -> list[str]:
    """Thumbnail sources of a result: its URLs, or data: URLs of inline base64 images."""
    out = []
    for item in (result or {}).get("data") or []:
        if item.get("url"):
            out.append(str(item["url"]))
        elif item.get("b64_json"):
            fmt = (result or {}).get("output_format") or "png"
            out.append(f"data:image/{fmt};base64,{item['b64_json']}")
    return out


def channels(gw: Gateway) -> list[dict[str, Any]]:
    """The upstream channels, the models each serves and their live state in this process."""
    out = []
    for view in gw.channels.view(time.time()):
        out.append(
            {
                **view,
                "host": urlsplit(view["base_url"]).netloc,
            }
        )
    return out


async def me(gw: Gateway, key_id: str) -> dict[str, Any] | None:
    key = await gw.store.get_key(key_id)
    if key is None:
        return None
    view = key_view(key)
    view["rpm_effective"] = key.rpm or gw.config.defaults.rpm
    view["concurrency_effective"] = key.max_concurrency or gw.config.defaults.max_concurrency
    view["status"] = status_of(key.disabled, key.expires_at)
    rows = await gw.store.usage_records(UsageQuery(key_id=key_id), limit=20)
    view["recent_usage"] = [record_view(r) for r in rows]
    recent_tasks = []
    for r in rows[:10]:
        task = await find_task(gw.tasks, gw.store, key_id, r.task_id) if r.task_id else None
        if task is not None and task.key_id == key_id:
            recent_tasks.append(task_view(task))
    view["recent_tasks"] = recent_tasks
    now = time.time()
    days = last_days(now)
    q = UsageQuery(key_id=key_id, since=day_start(now) - (DAYS - 1) * 86400)
    groups = await gw.store.usage_summary(q, "day")
    view["series"] = day_series([group_view(g) for g in groups], days)
    view["spent_30d"] = credits_json(sum(g.credits for g in groups))
    return view


async def audit(gw: Gateway, f: Filters, source: str, action: str) -> dict[str, Any]:
    """The audit log, newest first, filtered by source, action, target (a key id) and dates."""
    q = f.query()
    query = AuditQuery(
        source=source or None,
        action=action or None,
        target=f.key_id or None,
        since=q.since,
        until=q.until,
    )
    offset = (f.page - 1) * PAGE
    rows = await gw.audit.entries(query, limit=PAGE + 1, offset=offset)
    return {"rows": [audit_view(e) for e in rows[:PAGE]], "more": len(rows) > PAGE}
