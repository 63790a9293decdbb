"""The upstream side: channels, the one caller, and the one transport (docs/CHANNELS.md)."""

from __future__ import annotations

from app.core.config import GatewayConfig
from app.upstream.caller import UpstreamCaller
from app.upstream.channels import Channel, ChannelSet
from app.upstream.hints import parse_retry_after
from app.upstream.request import UpstreamRequest
from app.upstream.transport import Transport, UpstreamResponse


def build_channels(config: GatewayConfig) -> ChannelSet:
    """Every configured channel, and the channels of each model."""
    channels = {name: Channel(name, up, config.routing) for name, up in config.upstreams.items()}
    routes = {model: mc.channels for model, mc in config.models.items()}
    return ChannelSet(channels, routes)


__all__ = [
    "Channel",
    "ChannelSet",
    "Transport",
    "UpstreamCaller",
    "UpstreamRequest",
    "UpstreamResponse",
    "build_channels",
    "parse_retry_after",
]
