"""Channel admin: list channels with their health, drain or restore one, re-enable a key.

Channel health is per gateway process (docs/CHANNELS.md): these endpoints show and change the
process that answers.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, StrictBool

from app.api.deps import AdminActor, AdminGateway, admin_router
from app.api.responses import JSONResponse
from app.core.errors import GatewayError
from app.gateway import Gateway
from app.upstream.channels import Channel

router = admin_router("/channels")


class ChannelUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    disabled: StrictBool


def _channel(gw: Gateway, name: str) -> Channel:
    channel = gw.channels.get(name)
    if channel is None:
        raise GatewayError("not_found", f"no channel named {name!r}", status=404)
    return channel


def _view(gw: Gateway, channel: Channel) -> JSONResponse:
    return JSONResponse(channel.view(time.time(), gw.channels.models_of(channel.name)))


@router.get("", summary="Channels with state, keys (by prefix), in-flight and recent errors")
async def list_channels(gw: AdminGateway) -> JSONResponse:
    return JSONResponse({"object": "list", "data": gw.channels.view(time.time())})


@router.patch("/{name}", summary="Drain (disabled: true) or restore a channel (closes its circuit)")
async def update_channel(
    name: str, body: ChannelUpdate, gw: AdminGateway, by: AdminActor
) -> JSONResponse:
    channel = _channel(gw, name)
    channel.disabled = body.disabled
    if not body.disabled:  # restored: a fresh start, its breaker closed
        channel.circuit.succeeded()
    gw.caller.publish()
    await gw.audit.record(by, "channel.disable" if body.disabled else "channel.enable", name)
    return _view(gw, channel)


@router.post("/{name}/keys/{prefix}/enable", summary="Put a taken-out key back in use")
async def enable_key(name: str, prefix: str, gw: AdminGateway, by: AdminActor) -> JSONResponse:
    channel = _channel(gw, name)
    if not gw.channels.enable_key(channel, prefix):
        raise GatewayError("not_found", f"channel {name!r} has no key {prefix!r}", status=404)
    gw.caller.publish()
    await gw.audit.record(by, "channel.key_enable", name, {"key_prefix": prefix})
    return _view(gw, channel)
