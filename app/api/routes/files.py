"""GET /v1/files/{name}: stored results, for their retention period.

Names are `<task uuid>_<index>.<ext>`: unguessable, so they work as capability URLs the way a
CDN link does, without an Authorization header. Any replica answers: the bytes are streamed
from the shared storage (`proxy`), or the answer is a 302 to a presigned GET (`presign`).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from app.api.deps import gateway
from app.core.errors import GatewayError
from app.results import mime_for
from app.storage import StorageError

router = APIRouter(tags=["files"])


def _gone() -> GatewayError:
    return GatewayError("not_found", "no such file (it may have expired)", param="name")


@router.get("/v1/files/{name}", summary="A stored result image", response_model=None)
async def get_file(name: str, request: Request) -> Response:
    results = gateway(request).results
    try:
        if results.url_mode == "presign":
            url = await results.presigned(name)
            if url is None:
                raise _gone()
            return RedirectResponse(url, status_code=302, headers={"cache-control": "no-store"})
        opened = await results.open(name)
    except StorageError as exc:
        raise GatewayError(
            "service_unavailable", "result storage is unavailable, try again", status=503
        ) from exc
    if opened is None:
        raise _gone()
    headers = {"cache-control": "private", "content-length": str(opened.info.size)}
    return StreamingResponse(opened.chunks, media_type=mime_for(name), headers=headers)
