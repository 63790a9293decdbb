"""Every API endpoint (every route in the OpenAPI schema) is documented in docs/ (API.md or a
topic file): a route added without docs fails here, with the paths to describe. Pages (the
console, /docs) are described as a whole in their topic file."""

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
    api = {p for p, _, r in leaf_routes(create_app()) if getattr(r, "include_in_schema", False)}
    missing = sorted(p for p in api - UNDOCUMENTED if _shape(p) not in text)
    assert not missing, f"describe in docs/API.md (or your topic file): {missing}"
