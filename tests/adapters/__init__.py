"""Shared helpers for adapter/upstream tests: real Pillow images, requests, a recording upstream."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from PIL import Image as PILImage

from app.core.config import ModelConfig, PriceConfig, UpstreamConfig
from app.domain.edit import EditRequest, Image, ImageRef
from app.upstream.client import UpstreamClient

OPENAI_KEY = "sk-test-secret-key-123"
GEMINI_KEY = "gm-test-secret-key-456"


def image_bytes(w: int, h: int, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    PILImage.new(mode, (w, h), (200, 30, 30, 255)[: len(mode)]).save(buf, format=fmt)
    return buf.getvalue()


def make_image(w: int = 64, h: int = 64, fmt: str = "PNG", mode: str = "RGB") -> Image:
    mime = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}[fmt]
    return Image(image_bytes(w, h, fmt, mode), mime, w, h, has_alpha="A" in mode)


def make_mask(w: int = 64, h: int = 64) -> Image:
    return make_image(w, h, "PNG", "RGBA")


def make_req(
    model: str = "gpt-image-1.5",
    prompt: str = "make it blue",
    images: list[Image] | None = None,
    **kw: Any,
) -> EditRequest:
    """An `EditRequest` whose images are already resolved (what adapters see after media)."""
    imgs = [make_image()] if images is None else images
    params = ["image"] if len(imgs) == 1 else [f"image[{i}]" for i in range(len(imgs))]
    refs = [ImageRef(param=p, data=i.data) for p, i in zip(params, imgs, strict=True)]
    mask = kw.pop("mask", None)
    return EditRequest(
        model=model,
        prompt=prompt,
        image_refs=refs,
        body_kind=kw.pop("body_kind", "multipart"),
        images=imgs,
        mask=mask,
        mask_ref=ImageRef("mask", data=mask.data) if mask is not None else None,
        **kw,
    )


def upstream_config(kind: str = "openai", **kw: Any) -> UpstreamConfig:
    defaults: dict[str, Any] = {
        "kind": kind,
        "base_url": "http://upstream.test/v1"
        if kind == "openai"
        else "http://upstream.test/v1beta",
        "api_key": OPENAI_KEY if kind == "openai" else GEMINI_KEY,
        "retries": 2,
        "backoff_s": 0.001,
        "timeout_s": 5,
        "connect_timeout_s": 2,
        "max_concurrency": 4,
    }
    defaults.update(kw)
    return UpstreamConfig(**defaults)


def model_config(adapter: str, upstream_model: str, upstream: str = "openai") -> ModelConfig:
    return ModelConfig(
        adapter=adapter,
        upstream=upstream,
        upstream_model=upstream_model,
        price=PriceConfig(per_image=0.1),
    )


Handler = Callable[[httpx.Request], httpx.Response]


@dataclass
class Recorder:
    """An `httpx.MockTransport` handler that records requests and answers from a script.

    `answers` are consumed one per request (the last one repeats); each is an `httpx.Response`,
    an exception instance to raise, or a callable taking the request.
    """

    answers: list[Any] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        answer = self.answers[min(len(self.requests) - 1, len(self.answers) - 1)]
        if isinstance(answer, BaseException):
            raise answer
        if callable(answer):
            return answer(request)
        return answer

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]


def client_with(
    answers: list[Any], kind: str = "openai", **kw: Any
) -> tuple[UpstreamClient, Recorder]:
    rec = Recorder(answers=answers)
    return UpstreamClient(kind, upstream_config(kind, **kw), transport=rec.transport), rec


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.Response(
        status,
        content=orjson.dumps(body),
        headers={"content-type": "application/json", **(headers or {})},
    )


def openai_ok(n: int = 1, fmt: str = "PNG", **extra: Any) -> httpx.Response:
    data = [{"b64_json": base64.b64encode(image_bytes(32, 32, fmt)).decode()} for _ in range(n)]
    return json_response({"created": 1777048863, "data": data, **extra})


def openai_error(
    status: int,
    message: str,
    code: str | None = None,
    type_: str = "invalid_request_error",
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    err = {"message": message, "type": type_, "param": param, "code": code}
    return json_response({"error": err}, status, headers)


@dataclass
class Part:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def parse_multipart(request: httpx.Request) -> list[Part]:
    """Split a recorded multipart body into parts (independent of the encoder under test)."""
    ctype = request.headers["content-type"]
    assert ctype.startswith("multipart/form-data; boundary=")
    boundary = ctype.split("boundary=", 1)[1].encode()
    body = request.content
    assert body.endswith(b"--" + boundary + b"--\r\n")
    chunks = body.split(b"--" + boundary)
    parts = []
    for chunk in chunks[1:-1]:
        assert chunk.startswith(b"\r\n") and chunk.endswith(b"\r\n")
        head, _, data = chunk[2:-2].partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode().split("\r\n"):
            k, _, v = line.partition(": ")
            headers[k.lower()] = v
        disp = headers["content-disposition"]
        attrs = dict(item.strip().split("=", 1) for item in disp.split(";")[1:] if "=" in item)
        parts.append(
            Part(
                name=attrs["name"].strip('"'),
                filename=attrs["filename"].strip('"') if "filename" in attrs else None,
                content_type=headers.get("content-type"),
                data=data,
            )
        )
    return parts


def text_fields(parts: list[Part]) -> dict[str, str]:
    return {p.name: p.data.decode() for p in parts if p.filename is None}
