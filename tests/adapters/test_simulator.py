"""The adapters against the strict simulated upstreams over real HTTP (app.simulator).

These prove the outbound encoding is accepted by something as strict as the real services, and
that faults injected upstream (errors, safety, text-only, timeouts) come back mapped correctly.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.adapters.dall_e_2 import DallE2Adapter
from app.adapters.gpt_image import GptImageAdapter
from app.adapters.nano_banana import NanoBananaAdapter
from app.core.config import RoutingConfig
from app.core.errors import GatewayError
from app.upstream.channels import Channel
from tests.adapters import Bound, make_image, make_mask, make_req, model_config, upstream_config
from tests.support.net import ThreadedServer


@pytest.fixture(autouse=True)
def _reset(fresh_sim: ThreadedServer) -> None:
    """Every test starts with a quiet simulator (tests/adapters/conftest.py)."""


def fault(sim: ThreadedServer, **spec: Any) -> None:
    httpx.post(sim.url + "/_sim/faults", json=spec).raise_for_status()


def recorded(sim: ThreadedServer) -> list[dict[str, Any]]:
    return httpx.get(sim.url + "/_sim/requests").json()


def openai_client(sim: ThreadedServer, **kw: Any) -> Channel:
    config = upstream_config("openai", base_url=sim.url + "/v1", **kw)
    return Channel("openai", config, RoutingConfig())


def gemini_client(sim: ThreadedServer, **kw: Any) -> Channel:
    config = upstream_config("gemini", base_url=sim.url + "/v1beta", **kw)
    return Channel("gemini", config, RoutingConfig())


def on(channel: Channel, adapter: Any) -> Bound:
    """The adapter behind the production caller, on this one channel."""
    return Bound(adapter, channel, RoutingConfig(max_attempts=channel.config.retries + 1))


async def test_gpt_image_2_multi_image_edit(sim: ThreadedServer) -> None:
    client = openai_client(sim)
    a = on(client, GptImageAdapter("gpt-image-2", model_config("gpt-image", "gpt-image-2")))
    imgs = [make_image(64, 64), make_image(32, 32, "JPEG"), make_image(40, 40, "WEBP")]
    req = a.check_fields(
        make_req(
            "gpt-image-2",
            images=imgs,
            mask=make_mask(64, 64),
            size="2048x1152",
            input_fidelity="high",
            output_format="jpeg",
            output_compression=60,
        )
    )
    a.check_images(req)
    out = await a.edit(req, "trace-sim")
    await client.transport.aclose()
    assert len(out.images) == 1 and out.images[0].mime == "image/jpeg"
    assert "usage" in out.extra
    (rec,) = recorded(sim)
    assert rec["status"] == 200
    assert [f["name"] for f in rec["files"]] == ["image[]", "image[]", "image[]", "mask"]
    assert "input_fidelity" not in rec["fields"] and "n" not in rec["fields"]


async def test_gpt_image_alias_size_and_single_image(sim: ThreadedServer) -> None:
    client = openai_client(sim)
    a = on(client, GptImageAdapter("gpt-image-2", model_config("gpt-image", "gpt-image-2")))
    out = await a.edit(a.check_fields(make_req("gpt-image-2", size="1672x941")), "t")
    await client.transport.aclose()
    assert len(out.images) == 1
    (rec,) = recorded(sim)
    assert rec["fields"]["size"] == "1672x941" and rec["files"][0]["name"] == "image"


async def test_dall_e_2_n_images(sim: ThreadedServer) -> None:
    client = openai_client(sim)
    a = on(client, DallE2Adapter("dall-e-2", model_config("dall-e-2", "dall-e-2")))
    req = a.check_fields(
        make_req("dall-e-2", images=[make_image(64, 64, mode="RGBA")], n=3, size="256x256")
    )
    out = await a.edit(req, "t")
    await client.transport.aclose()
    assert len(out.images) == 3


async def test_nano_banana_edit(sim: ThreadedServer) -> None:
    client = gemini_client(sim)
    mc = model_config("nano-banana", "gemini-3-pro-image", upstream="gemini")
    a = on(client, NanoBananaAdapter("nano-banana-pro", mc))
    req = a.check_fields(make_req("nano-banana-pro", images=[make_image(), make_image(fmt="WEBP")]))
    out = await a.edit(req, "t")
    await client.transport.aclose()
    assert out.created == 0 and len(out.images) >= 1
    assert out.images[0].revised_prompt == "make it blue"


async def test_upstream_500_once_is_retried(sim: ThreadedServer) -> None:
    fault(sim, kind="status", status=500, times=1, protocol="openai")
    client = openai_client(sim)
    a = on(client, GptImageAdapter("gpt-image-1.5", model_config("gpt-image", "gpt-image-1.5")))
    out = await a.edit(a.check_fields(make_req()), "t")
    await client.transport.aclose()
    assert len(out.images) == 1
    assert [r["status"] for r in recorded(sim)] == [500, 200]


async def test_openai_safety_is_moderation_blocked(sim: ThreadedServer) -> None:
    fault(sim, kind="safety", protocol="openai")
    client = openai_client(sim)
    a = on(client, GptImageAdapter("gpt-image-1", model_config("gpt-image", "gpt-image-1")))
    with pytest.raises(GatewayError) as ei:
        await a.edit(a.check_fields(make_req("gpt-image-1")), "t")
    await client.transport.aclose()
    assert (ei.value.code, ei.value.status) == ("moderation_blocked", 400)
    assert len(recorded(sim)) == 1


async def test_openai_429_after_retries(sim: ThreadedServer) -> None:
    fault(sim, kind="status", status=429, times=None, retry_after=0, protocol="openai")
    client = openai_client(sim, retries=1)
    a = on(client, GptImageAdapter("gpt-image-1", model_config("gpt-image", "gpt-image-1")))
    with pytest.raises(GatewayError) as ei:
        await a.edit(a.check_fields(make_req("gpt-image-1")), "t")
    await client.transport.aclose()
    assert (ei.value.code, ei.value.status) == ("too_many_requests", 429)
    assert len(recorded(sim)) == 2


async def test_openai_timeout_is_504(sim: ThreadedServer) -> None:
    fault(sim, kind="timeout", delay_s=2, times=None, protocol="openai")
    client = openai_client(sim, retries=0, timeout_s=0.3)
    a = on(client, GptImageAdapter("gpt-image-1", model_config("gpt-image", "gpt-image-1")))
    with pytest.raises(GatewayError) as ei:
        await a.edit(a.check_fields(make_req("gpt-image-1")), "t")
    await client.transport.aclose()
    assert (ei.value.code, ei.value.status) == ("upstream_timeout", 504)


@pytest.mark.parametrize(
    ("spec", "code", "status"),
    [
        ({"kind": "safety"}, "moderation_blocked", 400),
        ({"kind": "safety", "where": "prompt"}, "moderation_blocked", 400),
        ({"kind": "text_only"}, "api_error", 502),
        ({"kind": "status", "status": 400}, "bad_request", 400),
        ({"kind": "status", "status": 403}, "api_error", 502),
    ],
)
async def test_gemini_faults_mapped(
    sim: ThreadedServer, spec: dict[str, Any], code: str, status: int
) -> None:
    fault(sim, protocol="gemini", **spec)
    client = gemini_client(sim)
    mc = model_config("nano-banana", "gemini-2.5-flash-image", upstream="gemini")
    a = on(client, NanoBananaAdapter("nano-banana", mc))
    with pytest.raises(GatewayError) as ei:
        await a.edit(a.check_fields(make_req("nano-banana")), "t")
    await client.transport.aclose()
    assert (ei.value.code, ei.value.status) == (code, status), ei.value


async def test_gpt_stream_through_simulator(sim: ThreadedServer) -> None:
    client = openai_client(sim)
    a = on(client, GptImageAdapter("gpt-image-1", model_config("gpt-image", "gpt-image-1")))
    req = a.check_fields(make_req("gpt-image-1", stream=True, partial_images=2))
    types = [e["type"] async for e in a.stream(req, "t")]
    await client.transport.aclose()
    assert types[-1] == "image_edit.completed"
    assert set(types[:-1]) <= {"image_edit.partial_image"}
