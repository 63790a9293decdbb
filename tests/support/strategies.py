"""Hypothesis strategies for what clients and operators can send: edit bodies (multipart and
JSON) and admin bodies and queries.

Each strategy mixes values the gateway accepts, values next to the rules (a size with a space,
`n` of 0, a JPEG mask) and arbitrary junk, so one run reaches both the success path and every
refusal. URLs are data: URLs or private addresses only: nothing generated ever leaves 127.0.0.1
(the test gateway refuses private addresses with a 400).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

from tests.support import images

ROOT = Path(__file__).resolve().parents[2]
PNG = images.png(32, 32)
PNG_ALPHA = images.png(32, 32, alpha=True)
SQUARE = images.png(256, 256, alpha=True)
MASK = images.mask_png(32, 32)
JPEG = images.jpeg(32, 32)
WEBP = images.webp(32, 32)
BOUNDARY = "hypoBOUNDARYhypo"
# The models of the shipped config (the test gateway runs it).
MODELS = sorted(yaml.safe_load((ROOT / "config" / "gateway.yaml").read_text())["models"])
DATA_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()
PRIVATE_URLS = ["http://127.0.0.1:9/a.png", "https://10.0.0.1/a.png", "http://[::1]/x.png"]

# A JSON value of any shape (bounded): what a confused or hostile client may put anywhere.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)

_FIELD_TEXT: dict[str, list[str]] = {
    "prompt": ["add a small green leaf", " ", "", "p" * 1001, "ünïcödé ✓"],
    "model": [*MODELS, "gpt-image-9", "", " dall-e-2"],
    "n": ["1", "2", "0", "-1", "11", "1.5", "x", " 1", "99999999999999999999", "\uff11"],
    "size": ["1024x1024", "auto", " 1024x1024", "256x256", "1536x1024", "0x0", "1024X1024", ""],
    "quality": ["low", "medium", "high", "auto", "standard", "best", ""],
    "response_format": ["b64_json", "url", "png", ""],
    "background": ["transparent", "opaque", "auto", "blue"],
    "output_format": ["png", "jpeg", "webp", "gif"],
    "output_compression": ["0", "50", "100", "101", "-5"],
    "input_fidelity": ["low", "high", "max"],
    "moderation": ["low", "auto", "none"],
    "user": ["user-1", ""],
    "stream": ["true", "false", "1", "0", "yes", "TRUE"],
    "partial_images": ["0", "1", "3", "4"],
    "callback_url": [*PRIVATE_URLS, "ftp://x/y", "not a url", ""],
}
SCALAR_NAMES = sorted(_FIELD_TEXT)
IMAGE_NAMES = ["image", "image[]", "image[0]", "image[1]", "image[2]", "image[99]", "mask"]
ODD_NAMES = ["image[x]", "image[-1]", "images", "foo", "Prompt", ""]


def _image_value() -> st.SearchStrategy[tuple[bytes, str | None]]:
    """(bytes, filename or None): uploads, URL text parts, and broken or non-image files."""
    files = st.sampled_from([PNG, PNG_ALPHA, SQUARE, MASK, JPEG, WEBP, PNG[:100], b"", b"GIF89a"])
    texts = st.sampled_from([DATA_URL, "data:,nope", *PRIVATE_URLS, "photo.png", " ", ""])
    return st.one_of(
        st.tuples(files, st.sampled_from(["a.png", "b.jpg", ""])),
        st.tuples(texts.map(str.encode), st.none()),
        st.tuples(st.binary(max_size=64), st.sampled_from(["x.png", None])),
    )


@st.composite
def multipart_part(draw: st.DrawFn) -> tuple[str, bytes, str | None]:
    """One part: (name, value, filename or None)."""
    kind = draw(st.sampled_from(["scalar", "scalar", "image", "odd"]))
    if kind == "image":
        name = draw(st.sampled_from(IMAGE_NAMES))
        value, filename = draw(_image_value())
        return name, value, filename
    if kind == "odd":
        name = draw(st.sampled_from(ODD_NAMES) | st.text(max_size=12))
        return name, draw(st.binary(max_size=32)), draw(st.sampled_from([None, "f.bin"]))
    name = draw(st.sampled_from(SCALAR_NAMES))
    value = draw(
        st.sampled_from(_FIELD_TEXT[name]).map(str.encode)
        | st.text(max_size=24).map(str.encode)
        | st.binary(max_size=24)
    )
    return name, value, None


def encode_multipart(parts: list[tuple[str, bytes, str | None]], boundary: str) -> bytes:
    out = bytearray()
    for name, value, filename in parts:
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        disposition = f'form-data; name="{quoted}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + value + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def _usual_parts(draw: st.DrawFn) -> list[tuple[str, bytes, str | None]]:
    """Most requests look nearly right (a model, a prompt and an image), so the success path
    and the rules behind the parser are reached, not only the parser's refusals."""
    parts: list[tuple[str, bytes, str | None]] = []
    if draw(st.booleans()):
        parts.append(("model", draw(st.sampled_from(MODELS)).encode(), None))
    if draw(st.integers(0, 9)):
        parts.append(("prompt", b"add a small green leaf", None))
    if draw(st.integers(0, 9)):
        parts.append(("image", draw(st.sampled_from([PNG, SQUARE])), "a.png"))
    return parts


@st.composite
def multipart_bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    """(Content-Type, body): mostly well-framed, sometimes cut short or mislabelled."""
    parts = _usual_parts(draw) + draw(st.lists(multipart_part(), max_size=5))
    parts = draw(st.permutations(parts))
    body = encode_multipart(parts, BOUNDARY)
    framing = draw(st.sampled_from(["ok"] * 8 + ["cut", "no-boundary", "other-boundary"]))
    content_type = f"multipart/form-data; boundary={BOUNDARY}"
    if framing == "cut":
        body = body[: draw(st.integers(0, max(len(body) - 1, 0)))]
    elif framing == "no-boundary":
        content_type = "multipart/form-data"
    elif framing == "other-boundary":
        content_type = "multipart/form-data; boundary=somethingelse"
    return content_type, body


_JSON_IMAGE = st.sampled_from(
    [DATA_URL, {"image_url": DATA_URL}, {"file_id": "file-1"}, {"image_url": 1}, *PRIVATE_URLS]
)


def _json_field(name: str) -> st.SearchStrategy[Any]:
    if name in ("image", "images", "mask"):
        return _JSON_IMAGE | st.lists(_JSON_IMAGE, max_size=4) | json_values
    if name in ("n", "output_compression", "partial_images"):
        return st.integers(-2, 12) | st.integers() | json_values
    if name == "stream":
        return st.booleans() | json_values
    return st.sampled_from(_FIELD_TEXT[name]) | json_values


@st.composite
def json_bodies(draw: st.DrawFn) -> bytes:
    """A JSON edit body: mostly an object of known fields, sometimes junk or another shape."""
    shape = draw(st.sampled_from(["object"] * 8 + ["value", "bytes"]))
    if shape == "bytes":
        return draw(st.binary(max_size=64))
    if shape == "value":
        return json.dumps(draw(json_values)).encode()
    doc: dict[str, Any] = {}
    if draw(st.booleans()):
        doc["model"] = draw(st.sampled_from(MODELS))
    if draw(st.integers(0, 9)):
        doc["prompt"] = "add a small green leaf"
    if draw(st.integers(0, 9)):
        doc["images"] = [{"image_url": DATA_URL}]
    names = st.sampled_from([*SCALAR_NAMES, "image", "images", "mask"]) | st.text(max_size=8)
    for name in draw(st.lists(names, max_size=4, unique=True)):
        known = name in _FIELD_TEXT or name in ("image", "images", "mask")
        doc[name] = draw(_json_field(name) if known else json_values)
    return json.dumps(doc).encode()


# --------------------------------------------------------------------------- admin bodies

_KEY_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "name": st.sampled_from(["team", "", "x" * 201]) | st.text(max_size=20),
    "credits": st.sampled_from(
        [0, 1, 2.5, "1.000001", "1e3", "-1", "0.0000001", 1e30, "abc", True]
    ),
    "rpm": st.sampled_from([1, 60, 0, -1, 2**63, 2**64, 1.5, "60", True]),
    "max_concurrency": st.sampled_from([1, 4, 0, -1, 2**63, 10**30, "2", False]),
    "models": st.sampled_from([["nano-banana"], [], ["nope"], "nano-banana", [1], None]),
    "expires_at": st.sampled_from(
        ["2099-01-02T03:04:05Z", "2099-01-02", 4102444800, -1, 1e300, "nan", "inf", "soon", ""]
    ),
    "disabled": st.sampled_from([True, False, None, "yes", 1]),
    "amount": st.sampled_from([1, -1, 0, "2.5", "-0.000001", 1e20, "1e-7", None, "x", [1]]),
    "note": st.sampled_from(["top-up", "", "n" * 501, None, 5]),
}


_VALID: dict[str, Any] = {"name": "team", "amount": "1.5"}


def admin_body(fields: list[str]) -> st.SearchStrategy[Any]:
    """A JSON object for an admin endpoint: a subset of its fields (targeted values or any JSON
    value) plus maybe an unknown field; sometimes not an object at all. The endpoint's required
    field mostly starts out valid, so the success path is reached too."""

    @st.composite
    def body(draw: st.DrawFn) -> Any:
        if not draw(st.integers(0, 9)):
            return draw(json_values)
        doc: dict[str, Any] = {k: v for k, v in _VALID.items() if k in fields}
        for name in draw(st.lists(st.sampled_from(fields), unique=True)):
            doc[name] = draw(_KEY_FIELDS[name] | json_values)
        if not draw(st.integers(0, 5)):
            doc[draw(st.text(max_size=8))] = draw(json_values)
        return doc

    return body()


_QUERY_VALUES: dict[str, st.SearchStrategy[str]] = {
    "group_by": st.sampled_from(["day", "model", "key", "hour", ""]),
    "since": st.sampled_from(["2020-01-01", "0", "-5", "1e300", "nan", "2026-13-01", "x", ""]),
    "until": st.sampled_from(["2099-01-01T00:00:00Z", "4102444800", "inf", ""]),
    "key_id": st.sampled_from(["key_nope", "", "%", "'; drop table keys; --"]),
    "model": st.sampled_from([*MODELS, "nope", ""]),
    "limit": st.sampled_from(["1", "100", "0", "10001", "-1", "x", "1e3", "99999999999999999999"]),
    "offset": st.sampled_from(["0", "5", "-1", "x", "99999999999999999999"]),
    "format": st.sampled_from(["json", "csv", "xml", ""]),
}


@st.composite
def usage_queries(draw: st.DrawFn) -> dict[str, str]:
    out = {}
    for name in draw(st.lists(st.sampled_from(sorted(_QUERY_VALUES)), unique=True)):
        out[name] = draw(_QUERY_VALUES[name] | st.text(max_size=12))
    return out


# Idempotency-Key: mostly absent; a few shared values so replays and conflicts happen; any
# printable ASCII (too long, odd characters) now and then.
idempotency_keys = st.sampled_from([None] * 6 + ["k-1", "k-2"]) | st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=300
)
