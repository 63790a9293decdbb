"""Admin actions on tasks: POST /admin/tasks/{task_id}/redeliver."""

from __future__ import annotations

from app.api.deps import AdminActor, AdminGateway, admin_router
from app.api.responses import JSONResponse

router = admin_router("/tasks")


@router.post(
    "/{task_id}/redeliver",
    summary="Send a task's undelivered callback now (409 if delivered or no callback)",
)
async def redeliver(task_id: str, gw: AdminGateway, by: AdminActor) -> JSONResponse:
    task = await gw.task_admin.redeliver(task_id, by=by)
    return JSONResponse(
        {
            "task_id": task.id,
            "delivered": task.delivered,
            "state": task.callback_state(),
            "attempts": task.delivery_attempts,
            "last_delivery": task.last_delivery,
        }
    )
