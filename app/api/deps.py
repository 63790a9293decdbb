"""Small helpers routes share: the gateway object, admin auth, the public base URL."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from app.core.errors import GatewayError
from app.gateway import Gateway


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def require_admin(request: Request) -> Gateway:
    gw = gateway(request)
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), gw.admin_key.encode()
    ):
        raise GatewayError("invalid_token", "admin API requires the admin key")
    return gw


def base_url(request: Request, gw: Gateway) -> str:
    if gw.settings.public_base_url:
        return gw.settings.public_base_url.rstrip("/")
    return str(request.base_url).rstrip("/")
