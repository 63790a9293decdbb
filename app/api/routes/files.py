"""GET /v1/files/{name}: stored results, for their retention period.

Names are `<task uuid>_<index>.<ext>`: unguessable, so they work as capability URLs the way
the seed's CDN links do, without an Authorization header.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import FileResponse

from app.api.deps import gateway
from app.core.errors import GatewayError
from app.results import mime_for

router = APIRouter(tags=["files"])


@router.get("/v1/files/{name}", summary="A stored result image")
async def get_file(name: str, request: Request) -> FileResponse:
    path = gateway(request).results.path(name)
    if path is None:
        raise GatewayError("not_found", "no such file (it may have expired)", param="name")
    return FileResponse(path, media_type=mime_for(name), headers={"cache-control": "private"})
