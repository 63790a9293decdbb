"""docs/CONFIG.md names every setting and every YAML field: a field added to
`app/core/config.py` without a line in the docs fails here (with the names to add)."""

from __future__ import annotations

import typing
from pathlib import Path

from pydantic import BaseModel

from app.core.config import GatewayConfig, Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "CONFIG.md"


def _models(annotation: object) -> list[type[BaseModel]]:
    """The pydantic models inside an annotation (`X | None`, `dict[str, X]`, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def _fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str]]:
    """(dotted path, leaf name) of every field, nested models included."""
    out = []
    for name, field in model.model_fields.items():
        out.append((prefix + name, name))
        for inner in _models(field.annotation):
            out.extend(_fields(inner, f"{prefix}{name}."))
    return out


def test_every_setting_is_documented() -> None:
    text = DOC.read_text()
    missing = [
        f"IMAGEGATE_{name.upper()}"
        for name in Settings.model_fields
        if f"`IMAGEGATE_{name.upper()}`" not in text
    ]
    assert not missing, f"add to docs/CONFIG.md: {missing}"


def _documented(text: str, path: str, leaf: str) -> bool:
    # As a table cell or code (`leaf`, `price.leaf`, `leaf.sub`) or as a section heading.
    marks = (f"`{leaf}`", f".{leaf}`", f"`{leaf}.", f"`{path}`", f"### {leaf}\n")
    return any(mark in text for mark in marks)


def test_every_yaml_field_is_documented() -> None:
    text = DOC.read_text()
    missing = sorted(
        {path for path, leaf in _fields(GatewayConfig) if not _documented(text, path, leaf)}
    )
    assert not missing, f"add to docs/CONFIG.md (with the default): {missing}"
