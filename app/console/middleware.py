"""Lets a signed-in console admin call the admin API with the session cookie instead of the
bearer key, so every change the console makes goes through the admin API's own routes and
validation.

Pure ASGI, and it only looks at `/admin/...` requests that carry no Authorization header and do
carry the session cookie. It marks the request (`scope["state"]["console_admin"]`) when the
session is an admin session and, for a state-changing method, the CSRF token and the Origin
check pass; the admin dependency accepts such a request, and the audit log records it as the
admin acting from the console. Anything else passes unmarked and the
admin API answers 401 as usual -- an API-key session never reaches admin endpoints.
"""

from __future__ import annotations

from http.cookies import SimpleCookie

from starlette.types import ASGIApp, Receive, Scope, Send

from app.console import sessions
from app.domain.audit import Actor


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return {k.lower(): v for k, v in scope.get("headers", ())}


def cookie_token(raw_cookie: bytes | None) -> str | None:
    if not raw_cookie:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw_cookie.decode("latin-1"))
    except Exception:  # a malformed Cookie header is ignored, not an error
        return None
    morsel = jar.get(sessions.COOKIE)
    return morsel.value if morsel is not None else None


class ConsoleAdminMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        admin_path = scope["type"] == "http" and scope["path"].startswith("/admin/")
        if admin_path and await _is_console_admin(scope):
            client = scope.get("client")
            state = scope.setdefault("state", {})
            state["console_admin"] = True
            state["audit_actor"] = Actor("admin", "console", client[0] if client else None)
        await self.app(scope, receive, send)


async def _is_console_admin(scope: Scope) -> bool:
    headers = _headers(scope)
    token = cookie_token(headers.get(b"cookie"))
    if not token or b"authorization" in headers:
        return False
    gw = scope["app"].state.gateway
    session = await sessions.lookup(gw.store, token, gw.admin_key)
    if session is None or session.role != "admin":
        return False
    if scope["method"] in sessions.SAFE_METHODS:
        return True
    return sessions.csrf_ok(
        session, headers.get(b"x-csrf-token", b"").decode()
    ) and sessions.same_origin(
        headers.get(b"origin", b"").decode() or None,
        headers.get(b"host", b"").decode() or None,
        gw.settings.public_base_url,
    )
