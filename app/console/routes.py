"""The console's HTTP side: sign-in and sign-out, one GET route per page, its static files, and
the offline `/docs` page.

Pages are rendered on the server from `pages.py`; the browser changes things only by calling
the admin API (with the session cookie and CSRF token, see `middleware.py`).
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from app import __version__
from app.api.deps import gateway
from app.console import pages, sessions
from app.console.middleware import ConsoleAdminMiddleware
from app.core.errors import GatewayError
from app.store.base import ConsoleSession, GroupBy

HERE = Path(__file__).parent
STATIC = "/console/static"
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.globals.update(static=STATIC, version=__version__)

#: No inline script anywhere in the console, so scripts are limited to the gateway's own files.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'"
)
NAV = [
    ("Overview", "/console"),
    ("Keys", "/console/keys"),
    ("Usage", "/console/usage"),
    ("Records", "/console/records"),
    ("Tasks", "/console/tasks"),
    ("Channels", "/console/channels"),
    ("Audit", "/console/audit"),
]

GROUP_BYS = ("day", "model", "key", "channel", "operation")
AUDIT_SOURCES = ("api", "cli", "console")

router = APIRouter(prefix="/console", include_in_schema=False)


def install(app: FastAPI) -> None:
    """Add the console (routes, static files, cookie access to the admin API) and `/docs`."""
    app.include_router(router)
    app.mount(STATIC, StaticFiles(directory=HERE / "static"), name="console-static")
    app.add_middleware(ConsoleAdminMiddleware)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="imagegate API",
            swagger_js_url=f"{STATIC}/vendor/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC}/vendor/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{STATIC}/vendor/swagger-ui/favicon-32x32.png",
            # no badge from validator.swagger.io: the page makes no third-party request
            swagger_ui_parameters={"validatorUrl": None},
        )


async def _session(request: Request) -> ConsoleSession | None:
    token = request.cookies.get(sessions.COOKIE)
    gw = gateway(request)
    return await sessions.lookup(gw.store, token, gw.admin_key)


def _render(
    request: Request,
    template: str,
    session: ConsoleSession | None,
    status: int = 200,
    **ctx: Any,
) -> Response:
    ctx.update(
        request=request,
        session=session,
        nav=NAV if session is not None and session.role == "admin" else [],
        path=request.url.path,
    )
    resp = templates.TemplateResponse(request, template, ctx, status_code=status)
    resp.headers["content-security-policy"] = CSP
    resp.headers["cache-control"] = "no-store"
    resp.headers["x-content-type-options"] = "nosniff"
    resp.headers["referrer-policy"] = "same-origin"
    return resp


def _to(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


async def _admin(request: Request) -> ConsoleSession | Response:
    """The admin session of this request, or where to send the browser instead."""
    session = await _session(request)
    if session is None:
        return _to("/console/login")
    if session.role != "admin":
        return _to("/console/me")
    return session


def _filters(request: Request) -> pages.Filters:
    q = request.query_params
    try:
        page = max(1, min(int(q.get("page") or 1), 10_000))
    except ValueError:
        page = 1
    status = q.get("status") or ""
    operation = q.get("operation") or ""
    return pages.Filters(
        key_id=(q.get("key_id") or "").strip(),
        model=(q.get("model") or "").strip(),
        channel=(q.get("channel") or "").strip(),
        operation=operation if operation in ("edit", "generate") else "",
        status=status if status in ("succeeded", "failed", "expired") else "",
        since=q.get("since") or "",
        until=q.get("until") or "",
        page=page,
    )


def _page_links(request: Request, f: pages.Filters, more: bool) -> dict[str, str | None]:
    params = {k: v for k, v in request.query_params.items() if k != "page" and v}

    def at(n: int) -> str:
        return request.url.path + "?" + urlencode({**params, "page": str(n)})

    prev = at(f.page - 1) if f.page > 1 else None
    return {"prev": prev, "next": at(f.page + 1) if more else None}


async def _listing(
    request: Request,
    session: ConsoleSession,
    template: str,
    title: str,
    f: pages.Filters,
    data: dict[str, Any],
    **extra: Any,
) -> Response:
    """A page with the filter form: key names, models and channels for its selects, and the
    previous/next page links."""
    gw = gateway(request)
    return _render(
        request,
        template,
        session,
        title=title,
        f=f,
        names=await pages.key_names(gw),
        models=sorted(gw.config.models),
        channels=sorted(gw.config.upstreams),
        links=_page_links(request, f, bool(data.get("more"))),
        **data,
        **extra,
    )


# --- sign-in


@router.get("/login")
async def login_form(request: Request) -> Response:
    session = await _session(request)
    if session is not None:
        return _to("/console" if session.role == "admin" else "/console/me")
    role = "key" if request.query_params.get("as") == "key" else "admin"
    return _render(request, "login.html", None, role=role, error=None)


@router.post("/login")
async def login(request: Request) -> Response:
    gw = gateway(request)
    form = await request.form()
    role = "key" if form.get("as") == "key" else "admin"
    secret = str(form.get("secret") or "").strip()
    if not sessions.same_origin(
        request.headers.get("origin"), request.headers.get("host"), gw.settings.public_base_url
    ):
        return _render(
            request, "login.html", None, 403, role=role, error="Sign-in must come from this page."
        )
    key = None
    if role == "admin":
        ok = bool(secret) and hmac.compare_digest(secret.encode(), gw.admin_key.encode())
    else:
        try:
            key = await gw.meter.authenticate(f"Bearer {secret}")
            ok = True
        except GatewayError:
            ok = False
    if not ok:
        error = "That admin key is not valid." if role == "admin" else "That API key is not valid."
        # 200, not 401: the form is shown again; a 401 page would be a browser console error
        return _render(request, "login.html", None, role=role, error=error)
    token, _ = await sessions.start(gw.store, role, key, admin_key=gw.admin_key)
    resp = _to("/console" if role == "admin" else "/console/me")
    resp.set_cookie(
        sessions.COOKIE,
        token,
        max_age=sessions.SESSION_TTL_S,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https"
        or (gw.settings.public_base_url or "").startswith("https:"),
    )
    return resp


@router.post("/logout")
async def logout(request: Request) -> Response:
    gw = gateway(request)
    form = await request.form()
    session = await _session(request)
    if session is not None and sessions.csrf_ok(session, str(form.get("csrf") or "")):
        await sessions.end(gw.store, request.cookies.get(sessions.COOKIE))
    resp = _to("/console/login")
    resp.delete_cookie(sessions.COOKIE, path="/", httponly=True, samesite="strict")
    return resp


# --- pages


@router.get("")
async def overview(request: Request) -> Response:
    session = await _session(request)
    if session is None:
        return _render(request, "login.html", None, role="admin", error=None)
    if session.role != "admin":
        return _to("/console/me")
    data = await pages.overview(gateway(request))
    return _render(request, "overview.html", session, title="Overview", **data)


@router.get("/keys")
async def keys(request: Request) -> Response:
    session = await _admin(request)
    if isinstance(session, Response):
        return session
    gw = gateway(request)
    return _render(
        request,
        "keys.html",
        session,
        title="Keys",
        keys=await pages.keys(gw),
        models=sorted(gw.config.models),
    )


@router.get("/usage")
async def usage(request: Request) -> Response:
    session = await _admin(request)
    if isinstance(session, Response):
        return session
    gw = gateway(request)
    f = _filters(request)
    raw = request.query_params.get("group_by") or "day"
    group_by: GroupBy = raw if raw in GROUP_BYS else "day"  # type: ignore[assignment]
    data = await pages.usage(gw, f, group_by)
    csv = "/admin/usage/records?" + urlencode({**f.api_params(), "format": "csv", "limit": "10000"})
    return await _listing(
        request, session, "usage.html", "Usage", f, data,
        group_by=group_by, group_bys=GROUP_BYS, csv_url=csv,
    )  # fmt: skip


@router.get("/records")
async def records(request: Request) -> Response:
    session = await _admin(request)
    if isinstance(session, Response):
        return session
    gw = gateway(request)
    f = _filters(request)
    data = await pages.records(gw, f)
    return await _listing(request, session, "records.html", "Records", f, data)


@router.get("/tasks")
async def tasks(request: Request) -> Response:
    session = await _admin(request)
    if isinstance(session, Response):
        return session
    gw = gateway(request)
    f = _filters(request)
    data = await pages.tasks(gw, f)
    return await _listing(request, session, "tasks.html", "Tasks", f, data)


@router.get("/tasks/{task_id}")
async def task_detail(task_id: str, request: Request) -> Response:
    session = await _admin(request)
    if isinstance(session, Response):
        return session
    view = await pages.task(gateway(request), task_id, request.query_params.get("key_id"))
    return _render(
        request,
        "task.html",
        session,
        title=f"Task {task_id}",
        task_id=task_id,
        task=view,
    )


@router.get("/channels")
async def channels(request: Request) -> Response:
    session = await _admin(request)
    if isinstance(session, Response):
        return session
    found = pages.channels(gateway(request))
    return _render(request, "channels.html", session, title="Channels", channels=found)


@router.get("/audit")
async def audit(request: Request) -> Response:
    session = await _admin(request)
    if isinstance(session, Response):
        return session
    gw = gateway(request)
    f = _filters(request)
    q = request.query_params
    source = q.get("source") if q.get("source") in AUDIT_SOURCES else ""
    action = (q.get("action") or "").strip()[:100]
    data = await pages.audit(gw, f, source or "", action)
    return await _listing(
        request, session, "audit.html", "Audit", f, data,
        source=source, action=action, sources=AUDIT_SOURCES,
    )  # fmt: skip


@router.get("/me")
async def me(request: Request) -> Response:
    session = await _session(request)
    if session is None:
        return _to("/console/login?as=key")
    if session.role != "key" or session.key_id is None:
        return _to("/console")
    data = await pages.me(gateway(request), session.key_id)
    if data is None:  # the key was revoked: the session ends with it
        await sessions.end(gateway(request).store, request.cookies.get(sessions.COOKIE))
        return _to("/console/login?as=key")
    return _render(request, "me.html", session, title="My key", me=data)
