"""Every HTTP endpoint the app serves is documented in docs/ (API.md or a topic file): a route
added without docs fails here, with the paths to describe."""

from __future__ import annotations

import re
from pathlib import Path

from app.api.app import create_app
from tests.support.routes import leaf_routes

DOCS = Path(__file__).resolve().parents[2] / "docs"
UNDOCUMENTED = {"/docs/oauth2-redirect", "/redoc"}  # FastAPI's own pages beside /docs


def _shape(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def test_every_route_is_documented() -> None:
    text = _shape("\n".join(p.read_text() for p in DOCS.glob("*.md")))
    missing = sorted(
        p
        for p in {path for path, _, _ in leaf_routes(create_app())} - UNDOCUMENTED
        if not p.startswith("/static") and _shape(p) not in text
    )
    assert not missing, f"describe in docs/API.md (or your topic file): {missing}"
