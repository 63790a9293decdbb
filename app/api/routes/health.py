"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.deps import gateway
from app.api.responses import JSONResponse
from app.core.metrics import CONTENT_TYPE

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/readyz", summary="Store reachable and config loaded")
async def readyz(request: Request) -> JSONResponse:
    gw = gateway(request)
    try:
        ok = await gw.store.ping()
    except Exception:
        ok = False
    status = "draining" if gw.draining else "ok" if ok else "unavailable"
    body = {"status": status, "store": ok, "models": len(gw.adapters)}
    return JSONResponse(body, 200 if ok and not gw.draining else 503)


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    gw = gateway(request)
    await gw.refresh_gauges()
    return Response(gw.metrics.render(), media_type=CONTENT_TYPE)
