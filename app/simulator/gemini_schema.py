"""Proto-JSON checking for Gemini `GenerateContentRequest`, the way Google's front end does it.

Unknown names anywhere are refused ("Invalid JSON payload received. Unknown name ..."), both
the json name (camelCase) and the proto name (snake_case) of a field are accepted, scalar types
are checked, and every violation is reported with its proto path, all in one 400.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from app.simulator.errors import invalid_argument

_PKG = "type.googleapis.com/google.ai.generativelanguage.v1beta"


@dataclass(frozen=True)
class Msg:
    """A proto message: canonical (camelCase) field name → schema."""

    name: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class Enum:
    name: str
    values: tuple[str, ...]


ANY = "any"
_BLOB = Msg("Blob", {"mimeType": "string", "data": "bytes"})
_FILE_DATA = Msg("FileData", {"mimeType": "string", "fileUri": "string"})
_PART = Msg(
    "Part",
    {
        "text": "string",
        "inlineData": _BLOB,
        "fileData": _FILE_DATA,
        "thought": "bool",
        "thoughtSignature": "bytes",
        "functionCall": ANY,
        "functionResponse": ANY,
        "executableCode": ANY,
        "codeExecutionResult": ANY,
        "videoMetadata": ANY,
        "mediaResolution": ANY,
        "partMetadata": ANY,
    },
)
_CONTENT = Msg("Content", {"role": "string", "parts": [_PART]})
_MODALITY = Enum("GenerationConfig.Modality", ("MODALITY_UNSPECIFIED", "TEXT", "IMAGE", "AUDIO"))
_THINKING_LEVEL = Enum(
    "ThinkingConfig.ThinkingLevel",
    ("THINKING_LEVEL_UNSPECIFIED", "MINIMAL", "LOW", "MEDIUM", "HIGH"),
)
_GENERATION_CONFIG = Msg(
    "GenerationConfig",
    {
        "stopSequences": ["string"],
        "responseMimeType": "string",
        "responseSchema": ANY,
        "responseJsonSchema": ANY,
        "responseModalities": [_MODALITY],
        "candidateCount": "int32",
        "maxOutputTokens": "int32",
        "temperature": "float",
        "topP": "float",
        "topK": "int32",
        "seed": "int32",
        "presencePenalty": "float",
        "frequencyPenalty": "float",
        "responseLogprobs": "bool",
        "logprobs": "int32",
        "enableEnhancedCivicAnswers": "bool",
        "speechConfig": ANY,
        "mediaResolution": "string",
        "thinkingConfig": Msg(
            "ThinkingConfig",
            {
                "includeThoughts": "bool",
                "thinkingBudget": "int32",
                "thinkingLevel": _THINKING_LEVEL,
            },
        ),
        "imageConfig": Msg("ImageConfig", {"aspectRatio": "string", "imageSize": "string"}),
    },
)
REQUEST = Msg(
    "GenerateContentRequest",
    {
        "model": "string",
        "contents": [_CONTENT],
        "generationConfig": _GENERATION_CONFIG,
        "safetySettings": [Msg("SafetySetting", {"category": "string", "threshold": "string"})],
        "systemInstruction": _CONTENT,
        "tools": [ANY],
        "toolConfig": ANY,
        "cachedContent": "string",
    },
)
_SCALAR_TYPES = {
    "string": "TYPE_STRING",
    "bool": "TYPE_BOOL",
    "int32": "TYPE_INT32",
    "float": "TYPE_FLOAT",
    "bytes": "TYPE_BYTES",
}


def snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def _canonical(msg: Msg, key: str) -> str | None:
    """The camelCase field a JSON key names (proto-JSON accepts json_name and proto name)."""
    if key in msg.fields:
        return key
    camel = re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), key)
    if camel in msg.fields and snake(camel) == key:
        return camel
    return None


def _show(value: Any) -> str:
    return orjson.dumps(value).decode()[:100]


def _check(value: Any, schema: Any, path: str, out: list[tuple[str, str]]) -> None:
    """Collect proto-JSON violations as (proto path, description)."""
    if value is None or schema == ANY:
        return
    if isinstance(schema, list):
        if not isinstance(value, list):
            out.append(
                (path, f"Invalid value at '{path}' ({_type_name(schema[0])}), {_show(value)}")
            )
            return
        for index, item in enumerate(value):
            _check(item, schema[0], f"{path}[{index}]", out)
        return
    if isinstance(schema, Msg):
        if not isinstance(value, dict):
            out.append((path, f"Invalid value at '{path}' ({_PKG}.{schema.name}), {_show(value)}"))
            return
        for key, item in value.items():
            canonical = _canonical(schema, key)
            if canonical is None:
                at = f" at '{path}'" if path else ""
                out.append(
                    (path, f'Invalid JSON payload received. Unknown name "{key}"{at}: '
                     "Cannot find field.")
                )  # fmt: skip
                continue
            child = f"{path}.{snake(canonical)}" if path else snake(canonical)
            _check(item, schema.fields[canonical], child, out)
        return
    if isinstance(schema, Enum):
        if not isinstance(value, str) or value.upper() not in schema.values:
            out.append((path, f"Invalid value at '{path}' ({_PKG}.{schema.name}), {_show(value)}"))
        return
    ok = {
        "string": isinstance(value, str),
        "bytes": isinstance(value, str),
        "bool": isinstance(value, bool),
        "int32": (isinstance(value, int) and not isinstance(value, bool))
        or (isinstance(value, str) and re.fullmatch(r"-?\d+", value) is not None),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
    }[schema]
    if not ok:
        out.append((path, f"Invalid value at '{path}' ({_SCALAR_TYPES[schema]}), {_show(value)}"))


def _type_name(schema: Any) -> str:
    if isinstance(schema, Msg):
        return f"{_PKG}.{schema.name}"
    if isinstance(schema, Enum):
        return f"{_PKG}.{schema.name}"
    return _SCALAR_TYPES.get(schema, "TYPE_MESSAGE")


def check_schema(body: Any) -> None:
    """Raise 400 INVALID_ARGUMENT listing every proto-JSON violation, as Google does."""
    if not isinstance(body, dict):
        raise invalid_argument(
            f"Invalid JSON payload received. Expected an object, got {_show(body)}."
        )
    violations: list[tuple[str, str]] = []
    _check(body, REQUEST, "", violations)
    if violations:
        raise invalid_argument("\n".join(d for _, d in violations), violations)


def get_field(obj: dict[str, Any], camel: str) -> Any:
    """A field by either spelling (the body is already schema-checked)."""
    value = obj.get(camel)
    return obj.get(snake(camel)) if value is None else value
