"""`POST /admin/reload`: read the YAML config again, as SIGHUP does.

A bad file is refused with the message start-up would print (400, `bad_request`) and the
running config stays. With `serve --workers N` the request reloads the process that answers
it; SIGHUP to the parent reloads them all (see docs/OPERATIONS.md).
"""

from __future__ import annotations

from app.api.deps import AdminGateway, admin_router
from app.api.responses import JSONResponse
from app.core.config import ConfigError
from app.core.errors import GatewayError

router = admin_router(tags=["admin"])


@router.post("/reload", summary="Reload the YAML config (SIGHUP does the same)")
async def reload_config(gw: AdminGateway) -> JSONResponse:
    try:
        config = gw.reload()
    except ConfigError as exc:
        raise GatewayError("bad_request", f"config error: {exc}") from exc
    return JSONResponse({"status": "reloaded", "models": sorted(config.models)})
