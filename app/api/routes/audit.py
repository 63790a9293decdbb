"""GET /admin/audit: the admin actions taken through the API, the CLI and the console."""

from __future__ import annotations

from fastapi import Query, Request

from app.api.deps import AdminGateway, admin_router
from app.api.responses import JSONResponse
from app.api.views import MAX_OFFSET, AuditPage, audit_view, parse_time
from app.store.base import AuditQuery

router = admin_router()


@router.get(
    "/audit",
    summary="Audit log: admin actions, newest first (filters, pagination)",
    responses={200: {"model": AuditPage}},
)
async def audit(
    gw: AdminGateway,
    request: Request,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
) -> JSONResponse:
    q = request.query_params
    query = AuditQuery(
        actor=q.get("actor") or None,
        source=q.get("source") or None,
        action=q.get("action") or None,
        target=q.get("target") or None,
        since=parse_time(q.get("since"), "since"),
        until=parse_time(q.get("until"), "until"),
    )
    entries = await gw.audit.entries(query, limit=limit, offset=offset)
    nxt = offset + len(entries) if len(entries) == limit else None
    return JSONResponse(
        {
            "data": [audit_view(e) for e in entries],
            "limit": limit,
            "offset": offset,
            "next_offset": nxt,
        }
    )
