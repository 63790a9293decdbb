"""Every HTTP endpoint the app serves is documented in docs/ (API.md or a topic file): a route
added without docs fails here, with the paths to describe."""

from __future__ import annotations

import re
from pathlib import Path

from app.api.app import create_app

DOCS = Path(__file__).resolve().parents[2] / "docs"
UNDOCUMENTED = {"/docs/oauth2-redirect", "/redoc"}  # FastAPI's own pages beside /docs


def _paths() -> set[str]:
    app = create_app()
    try:  # FastAPI >= 0.165 keeps included routers as one entry each
        from fastapi.routing import iter_route_contexts

        return {c.path for c in iter_route_contexts(app.routes) if c.path}
    except ImportError:
        return {p for r in app.routes if (p := getattr(r, "path", None))}


def _shape(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def test_every_route_is_documented() -> None:
    text = _shape("\n".join(p.read_text() for p in DOCS.glob("*.md")))
    missing = sorted(
        p for p in _paths() - UNDOCUMENTED if not p.startswith("/static") and _shape(p) not in text
    )
    assert not missing, f"describe in docs/API.md (or your topic file): {missing}"
