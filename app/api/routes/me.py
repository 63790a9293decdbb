"""GET /v1/me: a key reads its own balance, limits and recent usage."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.deps import gateway
from app.api.responses import JSONResponse
from app.api.views import group_view, key_view, record_view
from app.store.base import UsageGroup, UsageQuery

router = APIRouter(tags=["me"])


@router.get("/v1/me", summary="This API key's balance, limits and recent usage")
async def me(request: Request) -> JSONResponse:
    gw = gateway(request)
    key = await gw.meter.authenticate(request.headers.get("authorization"))
    fresh = await gw.store.get_key(key.id) or key
    recent = await gw.store.usage_records(UsageQuery(key_id=key.id), limit=20)
    totals = await gw.store.usage_summary(UsageQuery(key_id=key.id), "key")
    view = key_view(fresh)
    view["rpm"] = fresh.rpm or gw.config.defaults.rpm
    view["max_concurrency"] = fresh.max_concurrency or gw.config.defaults.max_concurrency
    view["recent_usage"] = [record_view(r) for r in recent]
    # all-time: credits charged beside what the upstream charged (USD)
    view["usage_totals"] = group_view(totals[0] if totals else UsageGroup(key.id))
    return JSONResponse(view)
