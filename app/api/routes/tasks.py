"""GET /v1/tasks/{task_id}: a task's state and result, for the key that created it."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.deps import gateway
from app.api.responses import JSONResponse
from app.core.errors import GatewayError
from app.tasks.records import find_task

router = APIRouter(tags=["tasks"])


@router.get("/v1/tasks/{task_id}", summary="An edit task's status and result")
async def get_task(task_id: str, request: Request) -> JSONResponse:
    gw = gateway(request)
    key = await gw.meter.authenticate(request.headers.get("authorization"))
    task = await find_task(gw.tasks, gw.store, key.id, task_id)
    if task is None or task.key_id != key.id:  # another key's task does not exist for you
        raise GatewayError("not_found", f"no task {task_id!r}", param="task_id")
    return JSONResponse(task.to_public())
