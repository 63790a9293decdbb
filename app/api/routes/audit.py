"""GET /admin/audit: the admin actions taken through the API, the CLI and the console."""

from __future__ import annotations

from fastapi import Request

from app.api.deps import AdminGateway, admin_router
from app.api.responses import JSONResponse
from app.api.views import audit_view, parse_time
from app.core.errors import bad_request
from app.store.base import AuditQuery

router = admin_router()


@router.get("/audit", summary="Audit log: admin actions, newest first (filters, pagination)")
async def audit(
    gw: AdminGateway, request: Request, limit: int = 100, offset: int = 0
) -> JSONResponse:
    if not 1 <= limit <= 1000 or offset < 0:
        raise bad_request("limit must be 1..1000 and offset >= 0", "limit")
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
