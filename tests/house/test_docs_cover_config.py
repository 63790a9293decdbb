"""docs/CONFIG.md names every setting and every YAML field with its default: a field added to
`app/core/config.py` without a line in the docs, or a default changed in the code but not in
the docs, fails here (with the names to fix)."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

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


def _sections(text: str) -> dict[str, list[list[str]]]:
    """Table rows (as cells) under each `### name` heading."""
    out: dict[str, list[list[str]]] = {}
    rows: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("### "):
            rows = out.setdefault(line[4:].strip(), [])
        elif line.startswith("|"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
    return out


def _spellings(value: object) -> set[str]:
    if isinstance(value, bool):
        return {str(value).lower()}
    if isinstance(value, float) and value.is_integer():
        return {str(int(value)), str(value)}
    return {str(value)}


def test_every_default_is_documented() -> None:
    sections = _sections(DOC.read_text())
    wrong = []
    for path, leaf in _fields(GatewayConfig):
        top = path.split(".")[0]
        field = _field(path)
        default = field.default
        if (
            default is PydanticUndefined
            or default is None
            or not isinstance(default, (int, float, str))
        ):
            continue
        rows = [r for r in sections.get(top, []) if re.search(rf"[`.]{leaf}`", r[0])]
        said = " | ".join(c for r in rows for c in r[1:])
        if not any(re.search(rf"(?<![\d.]){re.escape(s)}(?![\d.])", said) for s in
                   _spellings(default)):  # fmt: skip
            wrong.append(f"{path} (code: {default!r}; docs: {said or 'no row'})")
    assert not wrong, "docs/CONFIG.md disagrees with app/core/config.py:\n" + "\n".join(wrong)


def _field(path: str) -> typing.Any:
    model: type[BaseModel] = GatewayConfig
    *parents, leaf = path.split(".")
    for name in parents:
        model = _models(model.model_fields[name].annotation)[0]
    return model.model_fields[leaf]
