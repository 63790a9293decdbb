"""Every bad input gets a clear 4xx in the one error envelope, and no credit moves."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Stack
from tests.support import images

EDITS = "/v1/openai/images/edits"


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A PNG whose header claims huge dimensions (a decompression bomb's calling card)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


PNG = images.png(64, 64)

# (id, request kwargs for httpx.post, expected status, code, param or None)
CASES: list[tuple[str, dict[str, Any], int, str, str | None]] = [
    (
        "no image",
        {"data": {"model": "gpt-image-1", "prompt": "x"}, "files": {"x": (None, "")}},
        400,
        "bad_request",
        None,
    ),
    (
        "17 images",
        {
            "data": {"model": "gpt-image-1", "prompt": "x"},
            "files": [("image[]", (f"{i}.png", PNG, "image/png")) for i in range(17)],
        },
        400,
        "bad_request",
        "image",
    ),
    (
        "JPEG mask",  # the mask rule is the adapter's, after the media layer resolved it
        {
            "data": {"model": "gpt-image-1", "prompt": "x"},
            "files": [
                ("image", ("a.png", PNG, "image/png")),
                ("mask", ("m.png", images.jpeg(64, 64), "image/png")),
            ],
        },
        400,
        "bad_request",
        "mask",
    ),
    (
        "text file called x.png",
        {
            "data": {"model": "gpt-image-1", "prompt": "x"},
            "files": {"image": ("x.png", b"hello, I am text", "image/png")},
        },
        400,
        "bad_request",
        "image",
    ),
    (
        "truncated png",
        {
            "data": {"model": "gpt-image-1", "prompt": "x"},
            "files": {"image": ("t.png", images.png(256, 256)[:300], "image/png")},
        },
        400,
        "bad_request",
        "image",
    ),
    (
        "30000x30000 png header",
        {
            "data": {"model": "gpt-image-1", "prompt": "x"},
            "files": {"image": ("b.png", bomb_png(), "image/png")},
        },
        413,
        "payload_too_large",
        "image",
    ),
    (
        "empty prompt",
        {
            "data": {"model": "gpt-image-1", "prompt": "  "},
            "files": {"image": ("a.png", PNG, "image/png")},
        },
        400,
        "bad_request",
        "prompt",
    ),
    (
        "dall-e-2 1001-char prompt",
        {
            "data": {"model": "dall-e-2", "prompt": "p" * 1001},
            "files": {"image": ("a.png", PNG, "image/png")},
        },
        400,
        "bad_request",
        "prompt",
    ),
    (
        "unknown model",
        {
            "data": {"model": "gpt-image-9", "prompt": "x"},
            "files": {"image": ("a.png", PNG, "image/png")},
        },
        400,
        "api_not_implemented",
        "model",
    ),
    (
        "malformed json",
        {
            "content": b'{"model": "gpt-image-1", "prompt": ',
            "headers": {"content-type": "application/json"},
        },
        400,
        "bad_request",
        None,
    ),
    (
        "wrong content type",
        {
            "content": b"model=gpt-image-1&prompt=x",
            "headers": {"content-type": "application/x-www-form-urlencoded"},
        },
        400,
        "bad_request",
        None,
    ),
    (
        "json file_id",
        {"json": {"model": "gpt-image-1", "prompt": "x", "images": [{"file_id": "file-abc"}]}},
        400,
        "api_not_implemented",
        None,
    ),
]

SIZES = [
    "1024*1024", "1000x1000", "4000x2000", "3840x2176", "512x512", "3072x768", "AUTO",
    # digits, a lower-case x, digits -- nothing around them, nothing else
    " 1024x1024", "1024x1024 ", "1024X1024", "+1024x1024",
]  # fmt: skip
URLS = [
    "file:///etc/passwd",
    "http://169.254.169.254/",
    "http://127.0.0.1/",
    "http://2130706433/",
    "http://[::ffff:127.0.0.1]/",
    "http://0x7f.0.0.1/x.png",
    "http://[::1]/x.png",
    "http://10.1.2.3/x.png",
]


def check_envelope(r: httpx.Response, status: int, code: str, param: str | None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["success"] is False
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    assert "type" in body["error"]
    if param is not None:
        assert body["error"]["param"] == param, body
    assert body["trace_id"] == r.headers["x-request-id"]
    assert "Traceback" not in r.text
    return dict(body)


@pytest.fixture
def funded(stack: Stack) -> dict[str, Any]:
    return stack.create_key(credits=5, rpm=10_000, max_concurrency=50)


def _post(stack: Stack, key: dict[str, Any], **kwargs: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key['key']}", **kwargs.pop("headers", {})}
    return httpx.post(stack.url + EDITS, headers=headers, timeout=30, **kwargs)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_request_table(stack: Stack, funded: dict[str, Any], case: Any) -> None:
    _, kwargs, status, code, param = case
    before = stack.balance(funded["id"])
    stack.clear_sim()
    check_envelope(_post(stack, funded, **kwargs), status, code, param)
    assert stack.balance(funded["id"]) == before
    assert stack.sim_requests() == []


@pytest.mark.parametrize("size", SIZES)
def test_gpt_image_2_bad_sizes(stack: Stack, funded: dict[str, Any], size: str) -> None:
    r = _post(
        stack,
        funded,
        data={"model": "gpt-image-2", "prompt": "x", "size": size},
        files={"image": ("a.png", PNG, "image/png")},
    )
    check_envelope(r, 400, "bad_request", "size")
    assert stack.balance(funded["id"]) == 5


@pytest.mark.parametrize("size", ["1254x1254", "1672x941", "941x1672", "1536x864", "auto", ""])
def test_gpt_image_2_good_sizes(stack: Stack, funded: dict[str, Any], size: str) -> None:
    stack.clear_sim()
    r = _post(
        stack,
        funded,
        data={"model": "gpt-image-2", "prompt": "x", "size": size},
        files={"image": ("a.png", PNG, "image/png")},
    )
    assert r.status_code == 200, r.text
    sent = [q for q in stack.sim_requests() if q["protocol"] == "openai"][-1]
    if size in ("auto", ""):
        assert sent["fields"].get("size", "auto") == "auto"
    else:
        assert sent["fields"]["size"] == size  # relayed unchanged


@pytest.mark.parametrize("url", URLS)
def test_private_urls_refused(stack: Stack, funded: dict[str, Any], url: str) -> None:
    stack.clear_sim()
    r = _post(stack, funded, json={"model": "gpt-image-1", "prompt": "x", "image": url})
    check_envelope(r, 400, "bad_request", None)
    assert stack.balance(funded["id"]) == 5
    assert stack.sim_requests() == []


@pytest.mark.parametrize(
    "auth", [None, "Bearer ig-nope", "Basic abc", "Bearer " + "x" * 40, "Bearer test-admin-key"]
)
def test_bad_tokens(stack: Stack, auth: str | None) -> None:
    headers = {"authorization": auth} if auth else {}
    r = httpx.post(
        stack.url + EDITS,
        headers=headers,
        data={"model": "gpt-image-1", "prompt": "x"},
        files={"image": ("a.png", PNG, "image/png")},
        timeout=30,
    )
    check_envelope(r, 401, "invalid_token", None)


def test_model_not_allowed_for_key(stack: Stack) -> None:
    key = stack.create_key(credits=5, models=["nano-banana"])
    r = _post(
        stack,
        key,
        data={"model": "gpt-image-1", "prompt": "x"},
        files={"image": ("a.png", PNG, "image/png")},
    )
    check_envelope(r, 400, "token_mismatched", "model")


def test_unknown_field_is_not_dropped_silently(stack: Stack, funded: dict[str, Any]) -> None:
    r = _post(
        stack,
        funded,
        data={"model": "gpt-image-1", "prompt": "x", "colour": "blue"},
        files={"image": ("a.png", PNG, "image/png")},
    )
    check_envelope(r, 400, "bad_request", None)


def test_unknown_route_and_method(stack: Stack) -> None:
    r = httpx.get(stack.url + "/v1/nope", timeout=10)
    check_envelope(r, 404, "not_found", None)
    r = httpx.get(stack.url + EDITS, timeout=10)
    check_envelope(r, 405, "method_not_allowed", None)


def test_declared_body_over_the_limit_is_refused_before_reading(
    stack: Stack, funded: dict[str, Any]
) -> None:
    """A Content-Length over limits.max_body_bytes gets 413 without the body being sent."""
    import socket

    host, port = "127.0.0.1", stack.gateway.port
    head = (
        f"POST {EDITS} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {funded['key']}\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\n"
        f"Content-Length: {stack.config.limits.max_body_bytes + 1}\r\n\r\n"
    )
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(head.encode())
        answer = sock.recv(65536).decode("latin-1")
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert '"payload_too_large"' in answer
    assert stack.balance(funded["id"]) == 5
