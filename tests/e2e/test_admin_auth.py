"""Every admin route authenticates before it reads the body: an unauthenticated request with an
invalid body or query gets 401 `invalid_token`, never the 400 that would describe the body.

The routes are read from the app itself, so an admin endpoint added later is covered without
touching this file.
"""

from __future__ import annotations

import re

import httpx
import pytest
from starlette.routing import BaseRoute

from app.api.app import create_app
from app.api.deps import ADMIN_PREFIX, AdminRoute
from tests.e2e.conftest import Stack
from tests.support.routes import leaf_routes

BAD_AUTH = [{}, {"authorization": "Bearer wrong-admin-key"}, {"authorization": "Basic eDp5"}]
# Invalid in every way a handler could look at: malformed JSON, a bad query, a huge field.
BAD_BODIES = [
    (b"{not json", "application/json"),
    (b'{"name": 5, "amount": [], "unknown": true}', "application/json"),
    (b"\x00\xff", "application/octet-stream"),
]
BAD_QUERY = "?limit=notanumber&offset=-1&group_by=bogus&format=nope"


def admin_routes() -> list[tuple[str, str, BaseRoute]]:
    """(method, path, route) of every admin endpoint, included routers flattened."""
    out = []
    for path, methods, route in leaf_routes(create_app()):
        if path.startswith(ADMIN_PREFIX):
            out.extend((method, path, route) for method in sorted(methods))
    return out


def test_admin_routes_are_found() -> None:
    paths = {path for _, path, _ in admin_routes()}
    assert {"/admin/keys", "/admin/keys/{key_id}", "/admin/usage"} <= paths


@pytest.mark.parametrize(("method", "path", "route"), admin_routes())
def test_every_admin_route_is_an_admin_route(method: str, path: str, route: BaseRoute) -> None:
    # Built with app.api.deps.admin_router(): authentication before the body is read.
    assert isinstance(route, AdminRoute), f"{method} {path}: use admin_router()"


def test_unauthenticated_bad_requests_get_401(stack: Stack) -> None:
    with stack.admin() as admin:
        keys_before = admin.get("/admin/keys").json()["data"]
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        for method, path, _ in admin_routes():
            url = re.sub(r"\{[^}]+\}", "key_x", path) + BAD_QUERY
            for headers in BAD_AUTH:
                for body, ctype in BAD_BODIES:
                    r = client.request(
                        method, url, content=body, headers={**headers, "content-type": ctype}
                    )
                    where = f"{method} {path} {headers} {body!r}"
                    assert r.status_code == 401, f"{where}: {r.status_code} {r.text}"
                    err = r.json()
                    assert err["success"] is False and err["error"]["code"] == "invalid_token"
                    assert r.headers["x-request-id"] == err["trace_id"], where
    with stack.admin() as admin:
        assert admin.get("/admin/keys").json()["data"] == keys_before
