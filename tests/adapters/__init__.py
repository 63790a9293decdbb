"""Shared helpers for adapter/upstream tests: real Pillow images, requests, and a recording
upstream on a real socket.

`Recorder` is a scripted HTTP server on 127.0.0.1 (aiohttp's low-level server, in the session's
event loop): every request is recorded, and answered from `answers` in order (the last repeats).
An answer is a `Reply`, a callable taking the recorded request, `Drop()` (close the connection
without answering) or `Stall(s)` (answer nothing for s seconds). The adapters are driven through
`Bound`: the production caller with one channel whose base URL is the recorder — the same
transport, auth, retries and parsing production runs.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from PIL import Image as PILImage

from app.core.config import ModelConfig, PriceConfig, RoutingConfig, UpstreamConfig
from app.domain.edit import EditOutput, EditRequest, Image, ImageRef
from app.upstream.caller import UpstreamCaller
from app.upstream.channels import Channel, ChannelSet

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
    google = kind in ("gemini", "vertex")
    defaults: dict[str, Any] = {
        "kind": kind,
        "base_url": "http://upstream.test/v1beta" if google else "http://upstream.test/v1",
        "api_key": GEMINI_KEY if google else OPENAI_KEY,
        "retries": 2,
        "backoff_s": 0.001,
        "timeout_s": 5,
        "connect_timeout_s": 2,
        "max_concurrency": 4,
    }
    if kind == "azure-openai":
        defaults["api_version"] = "2025-04-01-preview"
    defaults.update(kw)
    return UpstreamConfig(**defaults)


def model_config(adapter: str, upstream_model: str, upstream: str = "openai") -> ModelConfig:
    return ModelConfig(
        adapter=adapter,
        upstream=upstream,
        upstream_model=upstream_model,
        price=PriceConfig(per_image=0.1),
    )


# ---------------------------------------------------------------------------------------------
# The recording upstream


@dataclass
class Reply:
    """A scripted answer (the same arguments as an HTTP response: status, content, headers)."""

    status: int = 200
    content: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Drop:
    """Close the connection without answering."""


@dataclass
class Stall:
    """Answer nothing for `seconds`."""

    seconds: float = 30.0


@dataclass
class Slow:
    """Answer `reply` after `seconds` (other requests are served meanwhile)."""

    seconds: float
    reply: Reply


@dataclass
class Recorded:
    method: str
    url: str
    headers: CIMultiDictProxy[str]
    content: bytes


class _Server:
    """One aiohttp low-level server for the test session; recorders are told apart by path."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.recorders: dict[str, Recorder] = {}
        self._started: asyncio.Future[None] | None = None

    async def ensure(self) -> None:
        if self._started is None:
            self._started = asyncio.get_running_loop().create_future()
            server = web.Server(self._handle)
            await asyncio.get_running_loop().create_server(server, sock=self.sock)
            self._started.set_result(None)
        await self._started

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        rid, _, rest = request.rel_url.path.lstrip("/").partition("/")
        rec = self.recorders.get(rid)
        if rec is None:
            return web.Response(status=599)
        body = await request.read()
        url = f"http://upstream.test/{rest}" + (
            f"?{request.rel_url.query_string}" if request.rel_url.query_string else ""
        )
        return await rec.answer(request, Recorded(request.method, url, request.headers, body))


SERVER = _Server()
_ids = itertools.count(1)


@dataclass
class Recorder:
    """Records requests and answers from a script (see the module docstring). Recorded URLs
    read as `http://upstream.test/...` whatever the real port."""

    answers: list[Any] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    rid: str = ""
    active: int = 0
    peak: int = 0

    def __post_init__(self) -> None:
        self.rid = f"r{next(_ids)}"
        SERVER.recorders[self.rid] = self

    def base(self, path: str) -> str:
        """The real base URL that reaches this recorder as `http://upstream.test{path}`."""
        return f"http://127.0.0.1:{SERVER.port}/{self.rid}{path}"

    async def answer(self, request: web.BaseRequest, rec: Recorded) -> web.StreamResponse:
        self.requests.append(rec)
        answer = self.answers[min(len(self.requests) - 1, len(self.answers) - 1)]
        if callable(answer) and not isinstance(answer, Reply | Drop | Stall | Slow):
            answer = answer(rec)
        if isinstance(answer, Drop):
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)
        if isinstance(answer, Slow):
            self.active += 1
            self.peak = max(self.peak, self.active)
            await asyncio.sleep(answer.seconds)
            self.active -= 1
            answer = answer.reply
        if isinstance(answer, Stall):
            await asyncio.sleep(answer.seconds)
            return web.Response(status=504)
        return web.Response(
            status=answer.status, body=answer.content, headers=CIMultiDict(answer.headers)
        )

    @property
    def last(self) -> Recorded:
        return self.requests[-1]


class Bound:
    """An adapter behind the production caller, with one channel pointed at a recorder."""

    def __init__(self, adapter: Any, channel: Channel, routing: RoutingConfig) -> None:
        self.adapter = adapter
        self.channel = channel
        channels = ChannelSet({channel.name: channel}, {adapter.model: [channel.name]})
        self.caller = UpstreamCaller(channels, routing)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.adapter, name)

    async def edit(self, req: EditRequest, trace_id: str) -> EditOutput:
        await SERVER.ensure()
        try:
            return await self.caller.edit(self.adapter, req, trace_id)
        finally:
            await self.channel.transport.aclose()

    async def stream(self, req: EditRequest, trace_id: str) -> AsyncIterator[dict[str, Any]]:
        await SERVER.ensure()
        try:
            async for event in self.caller.stream(self.adapter, req, trace_id):
                yield event
        finally:
            await self.channel.transport.aclose()


def recording_channel(
    answers: list[Any], kind: str = "openai", name: str | None = None, **kw: Any
) -> tuple[Channel, Recorder]:
    rec = Recorder(answers=answers)
    path = "/v1beta" if kind in ("gemini", "vertex") else "/v1"
    config = upstream_config(kind, **{"base_url": rec.base(path), **kw})
    return Channel(name or kind, config, RoutingConfig()), rec


def bind(
    factory: Callable[[ModelConfig], Any],
    answers: list[Any],
    kind: str = "openai",
    routing: RoutingConfig | None = None,
    **kw: Any,
) -> tuple[Bound, Recorder]:
    """`factory(model_config)` → adapter, bound to a recording channel of `kind`."""
    channel, rec = recording_channel(answers, kind, **kw)
    routing = routing or RoutingConfig(max_attempts=channel.config.retries + 1)
    adapter = factory(model_config("x", "x", channel.name))
    return Bound(adapter, channel, routing), rec


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    return Reply(
        status, orjson.dumps(body), {"content-type": "application/json", **(headers or {})}
    )


def openai_ok(n: int = 1, fmt: str = "PNG", **extra: Any) -> Reply:
    data = [{"b64_json": base64.b64encode(image_bytes(32, 32, fmt)).decode()} for _ in range(n)]
    return json_response({"created": 1777048863, "data": data, **extra})


def openai_error(
    status: int,
    message: str,
    code: str | None = None,
    type_: str = "invalid_request_error",
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    err = {"message": message, "type": type_, "param": param, "code": code}
    return json_response({"error": err}, status, headers)


@dataclass
class Part:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def parse_multipart(request: Recorded | Mapping[str, Any]) -> list[Part]:
    """Split a recorded multipart body into parts (independent of the encoder under test)."""
    assert isinstance(request, Recorded)
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
