"""Over real HTTP: the hand-made multipart must parse with a real server-side parser (Starlette's
python-multipart), and the channel's transport must reuse its connection."""

from __future__ import annotations

import base64
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.adapters.gpt_image import GptImageAdapter
from app.core.config import RoutingConfig
from app.upstream.channels import Channel
from tests.adapters import Bound, image_bytes, make_image, make_mask, make_req, model_config
from tests.adapters import upstream_config as make_upstream_config
from tests.support.net import serve

seen: list[dict[str, Any]] = []


async def edits(request: Request) -> JSONResponse:
    form = await request.form()
    parts: list[Any] = []
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            data = await value.read()
            parts.append([name, value.filename, value.content_type, len(data)])
        else:
            parts.append([name, value])
    seen.append(
        {
            "parts": parts,
            "auth": request.headers.get("authorization"),
            "client_port": request.client.port if request.client else None,
        }
    )
    png = base64.b64encode(image_bytes(8, 8)).decode()
    return JSONResponse({"created": 1, "data": [{"b64_json": png}]})


app = Starlette(routes=[Route("/v1/images/edits", edits, methods=["POST"])])


async def test_multipart_parses_with_a_real_parser_and_connection_is_reused() -> None:
    seen.clear()
    with serve(app) as server:
        cfg = make_upstream_config(base_url=server.url + "/v1")
        channel = Channel("openai", cfg, RoutingConfig())
        gpt = GptImageAdapter("gpt-image-2", model_config("gpt-image", "gpt-image-2"))
        adapter = Bound(gpt, channel, RoutingConfig())
        imgs = [make_image(64, 64, "PNG"), make_image(20, 20, "JPEG")]
        req = adapter.check_fields(
            make_req(
                "gpt-image-2",
                prompt='a "quoted"\r\nprompt',
                images=imgs,
                mask=make_mask(64, 64),
                size="1536x1024",
                quality="high",
            )
        )
        out1 = await adapter.caller.edit(gpt, req, "t1")
        out2 = await adapter.caller.edit(gpt, req, "t2")
        await channel.transport.aclose()
    assert len(out1.images) == len(out2.images) == 1
    first = seen[0]
    assert first["parts"] == [
        ["model", "gpt-image-2"],
        ["prompt", 'a "quoted"\r\nprompt'],
        ["size", "1536x1024"],
        ["quality", "high"],
        ["image[]", "image_0.png", "image/png", len(imgs[0].data)],
        ["image[]", "image_1.jpeg", "image/jpeg", len(imgs[1].data)],
        ["mask", "mask.png", "image/png", len(req.mask.data) if req.mask else 0],
    ]
    assert first["auth"].startswith("Bearer ")
    assert seen[0]["client_port"] == seen[1]["client_port"]  # keep-alive: same connection
