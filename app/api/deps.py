"""Small helpers routes share: the gateway object, admin auth, the public base URL.

Admin endpoints are built on `admin_router()`: every route on it checks the admin key before
FastAPI reads or validates the body (an unauthenticated caller gets 401, never a 400/422 that
would reveal the body's schema), so a new admin handler cannot forget authentication.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Security
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import Request
from starlette.responses import Response

from app.core.errors import GatewayError
from app.domain.audit import Actor
from app.gateway import Gateway

ADMIN_PREFIX = "/admin"


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def authenticate_admin(request: Request) -> Gateway:
    """The gateway, if the request carries `Authorization: Bearer <admin key>` or comes from a
    signed-in console admin (session cookie + CSRF token, marked by app/console/middleware.py);
    else 401."""
    gw = gateway(request)
    if getattr(request.state, "console_admin", False):
        return gw
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), gw.admin_key.encode()
    ):
        raise GatewayError("invalid_token", "admin API requires the admin key")
    return gw


_admin_bearer = HTTPBearer(
    auto_error=False, scheme_name="AdminKey", description="IMAGEGATE_ADMIN_KEY as a bearer token"
)


def admin_gateway(
    request: Request,
    _credentials: HTTPAuthorizationCredentials | None = Security(_admin_bearer),
) -> Gateway:
    """Dependency: the gateway for an admin request (documents the bearer scheme in OpenAPI)."""
    return authenticate_admin(request)


AdminGateway = Annotated[Gateway, Depends(admin_gateway)]
"""Handler parameter type for admin routes: `gw: AdminGateway`."""


def admin_actor(request: Request) -> Actor:
    """Who is making this admin change, for the audit log.

    A front end that calls the admin routes on someone's behalf (the console) sets
    `request.state.audit_actor` to its own `Actor`; otherwise it is the admin key over the API,
    from the client's address."""
    actor = getattr(request.state, "audit_actor", None)
    if isinstance(actor, Actor):
        return actor
    return Actor("admin", "api", request.client.host if request.client else None)


AdminActor = Annotated[Actor, Depends(admin_actor)]
"""Handler parameter type for admin routes that change something: `by: AdminActor`."""


class AdminRoute(APIRoute):
    """A route that authenticates the admin before FastAPI touches the request body.

    FastAPI parses the JSON body (and answers 400 for malformed JSON) before it solves
    dependencies, so the router dependency alone would let body errors through first.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def authenticated(request: Request) -> Response:
            authenticate_admin(request)
            return await handler(request)

        return authenticated


def admin_router(prefix: str = "", **kwargs: Any) -> APIRouter:
    """An `APIRouter` for admin endpoints under `/admin{prefix}`, authenticated on every route.

    Add admin endpoints in their own module with `router = admin_router("/things")` and
    include the router in `app/api/app.py`; handlers take `gw: AdminGateway`.
    """
    kwargs.setdefault("tags", ["admin"])
    return APIRouter(
        prefix=ADMIN_PREFIX + prefix,
        dependencies=[Depends(admin_gateway)],
        route_class=AdminRoute,
        **kwargs,
    )


_BASE_URLS: dict[tuple[Any, ...], str] = {}


def base_url(request: Request, gw: Gateway) -> str:
    """The URL result links start with: the configured public one, else what the request
    reached: Starlette's `base_url`, remembered per scheme, Host, root path and server
    (building it costs ~20 µs, about 2% of an edit's CPU)."""
    if gw.settings.public_base_url:
        return gw.settings.public_base_url.rstrip("/")
    scope = request.scope
    host = request.headers.get("host")
    key = (
        scope.get("scheme"),
        host,
        scope.get("app_root_path"),
        scope.get("root_path", ""),
        None if host else scope.get("server"),
    )
    url = _BASE_URLS.get(key)
    if url is None:
        url = str(request.base_url).rstrip("/")
        if len(_BASE_URLS) >= 256:  # Host is the client's to choose: keep the map small
            _BASE_URLS.clear()
        _BASE_URLS[key] = url
    return url
