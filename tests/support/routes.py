"""The app's routes, included routers flattened: what tests iterate to cover every endpoint."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import BaseRoute


def leaf_routes(app: Starlette) -> list[tuple[str, set[str], BaseRoute]]:
    """(path, methods, route) of every route the app serves."""
    try:  # FastAPI >= 0.165 keeps an included router as one entry
        from fastapi.routing import iter_route_contexts

        found = [(c.path, c.methods, c.original_route) for c in iter_route_contexts(app.routes)]
    except ImportError:
        found = [(getattr(r, "path", None), getattr(r, "methods", None), r) for r in app.routes]
    return [(path, set(methods or ()), route) for path, methods, route in found if path]
