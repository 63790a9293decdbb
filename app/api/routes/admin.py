"""The admin API (docs/API.md, "Admin API"): keys, credits and usage, behind the admin key.

Thin: bodies are checked by pydantic, the work is `KeyAdmin` and the store, shared with the CLI.
"""

from __future__ import annotations

import csv
import io
from typing import Annotated, Any, Literal

from fastapi import Depends, Query
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.responses import Response

from app.api.deps import AdminActor, AdminGateway, admin_router
from app.api.responses import JSONResponse
from app.api.views import (
    MAX_OFFSET,
    RECORD_COLUMNS,
    KeyBalance,
    KeyCreated,
    KeyDeleted,
    KeyList,
    KeyView,
    RecordPage,
    UsageSummary,
    group_view,
    key_view,
    parse_time,
    record_csv_row,
    record_view,
)
from app.core.errors import bad_request
from app.core.money import credits_json
from app.domain.keys import parse_credits
from app.store.base import UsageQuery

router = admin_router()


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Checked by `parse_credits`, not pydantic: `true` is not 1 credit, and a number's text is parsed
# exactly (a number or a decimal string).
Credits = Any


class KeyCreate(_Body):
    name: str = Field(min_length=1, max_length=200)
    credits: Credits = 0
    rpm: StrictInt | None = Field(None, ge=1)
    max_concurrency: StrictInt | None = Field(None, ge=1)
    models: list[str] | None = None
    expires_at: float | str | None = None


class KeyUpdate(_Body):
    name: str | None = Field(None, min_length=1, max_length=200)
    rpm: StrictInt | None = Field(None, ge=1)
    max_concurrency: StrictInt | None = Field(None, ge=1)
    models: list[str] | None = None
    expires_at: float | str | None = None
    disabled: bool | None = None


class CreditsBody(_Body):
    amount: Credits
    note: str | None = Field(None, max_length=500)


@router.post(
    "/keys",
    status_code=201,
    summary="Create an API key (the secret is shown once)",
    responses={201: {"model": KeyCreated}},
)
async def create_key(body: KeyCreate, gw: AdminGateway, by: AdminActor) -> JSONResponse:
    new = await gw.keys.create(
        by=by,
        name=body.name,
        credits=parse_credits(body.credits),
        rpm=body.rpm,
        max_concurrency=body.max_concurrency,
        models=body.models,
        expires_at=parse_time(body.expires_at, "expires_at"),
    )
    out = key_view(new.key) | {"key": new.secret, "webhook_secret": new.key.webhook_secret}
    return JSONResponse(out, 201)


@router.get("/keys", summary="List API keys", responses={200: {"model": KeyList}})
async def list_keys(gw: AdminGateway) -> JSONResponse:
    return JSONResponse({"data": [key_view(k) for k in await gw.keys.list()]})


@router.get("/keys/{key_id}", summary="One API key", responses={200: {"model": KeyView}})
async def get_key(key_id: str, gw: AdminGateway) -> JSONResponse:
    return JSONResponse(key_view(await gw.keys.get(key_id)))


@router.patch(
    "/keys/{key_id}",
    summary="Change a key's name, limits, models, expiry, disabled",
    responses={200: {"model": KeyView}},
)
async def update_key(
    key_id: str, body: KeyUpdate, gw: AdminGateway, by: AdminActor
) -> JSONResponse:
    changes: dict[str, Any] = body.model_dump(exclude_unset=True)
    for field in ("name", "disabled"):  # null resets rpm, models, ... but these have no default
        if field in changes and changes[field] is None:
            raise bad_request(f"{field} must not be null", field)
    if "expires_at" in changes:
        changes["expires_at"] = parse_time(changes["expires_at"], "expires_at")
    key = await gw.keys.update(key_id, changes, by=by)
    gw.meter.forget(key_id)
    return JSONResponse(key_view(key))


@router.delete("/keys/{key_id}", summary="Revoke a key", responses={200: {"model": KeyDeleted}})
async def delete_key(key_id: str, gw: AdminGateway, by: AdminActor) -> JSONResponse:
    await gw.keys.revoke(key_id, by=by)
    gw.meter.forget(key_id)
    return JSONResponse({"id": key_id, "deleted": True})


@router.post(
    "/keys/{key_id}/credits",
    summary="Top up (or deduct with a negative amount)",
    responses={200: {"model": KeyBalance}},
)
async def add_credits(
    key_id: str, body: CreditsBody, gw: AdminGateway, by: AdminActor
) -> JSONResponse:
    amount = parse_credits(body.amount, "amount", allow_negative=True)
    balance = await gw.keys.add_credits(key_id, amount, body.note, by=by)
    return JSONResponse({"id": key_id, "balance": credits_json(balance)})


def usage_filters(
    key_id: str | None = None,
    model: str | None = None,
    since: str | None = Query(None, description="unix seconds or ISO 8601"),
    until: str | None = Query(None, description="unix seconds or ISO 8601"),
    channel: str | None = None,
    operation: str | None = None,
    status: str | None = None,
) -> UsageQuery:
    """The filters both usage endpoints take (empty means no filter)."""
    return UsageQuery(
        key_id=key_id or None,
        model=model or None,
        since=parse_time(since, "since"),
        until=parse_time(until, "until"),
        channel=channel or None,
        operation=operation or None,
        status=status or None,
    )


UsageFilters = Annotated[UsageQuery, Depends(usage_filters)]


@router.get(
    "/usage",
    summary="Usage aggregates: requests, images, credits, upstream cost (USD)",
    responses={200: {"model": UsageSummary}},
)
async def usage(
    gw: AdminGateway,
    query: UsageFilters,
    group_by: Literal["day", "model", "key", "channel", "operation"] = "day",
) -> JSONResponse:
    groups = await gw.store.usage_summary(query, group_by)
    return JSONResponse({"group_by": group_by, "data": [group_view(g) for g in groups]})


@router.get(
    "/usage/records",
    summary="Ledger rows, newest first; format=csv to export",
    responses={200: {"model": RecordPage, "content": {"text/csv": {"schema": {"type": "string"}}}}},
)
async def usage_records(
    gw: AdminGateway,
    query: UsageFilters,
    limit: int = Query(100, ge=1, le=10_000),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    format: str = "json",
) -> Response:
    rows = await gw.store.usage_records(query, limit=limit, offset=offset)
    if format == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=RECORD_COLUMNS)
        writer.writeheader()
        writer.writerows(record_csv_row(r) for r in rows)
        return Response(
            buf.getvalue(),
            media_type="text/csv",
            headers={"content-disposition": 'attachment; filename="usage.csv"'},
        )
    if format != "json":
        raise bad_request("format must be json or csv", "format")
    views = [record_view(r) for r in rows]
    nxt = offset + len(views) if len(views) == limit else None
    return JSONResponse({"data": views, "limit": limit, "offset": offset, "next_offset": nxt})
