"""Adapter registry and build_adapters from a gateway config."""

from __future__ import annotations

import pytest

from app.adapters import ADAPTERS, build_adapters
from app.adapters.dall_e_2 import DallE2Adapter
from app.adapters.gpt_image import GptImageAdapter
from app.adapters.nano_banana import NanoBananaAdapter
from app.core.config import GatewayConfig, Settings, load_config
from app.upstream import build_channels
from tests.adapters import make_req, model_config, upstream_config


def test_registry_names() -> None:
    assert {
        "gpt-image": GptImageAdapter,
        "dall-e-2": DallE2Adapter,
        "nano-banana": NanoBananaAdapter,
    } == ADAPTERS


async def test_shipped_config_builds_every_model() -> None:
    cfg = load_config(Settings(), "app/defaults/gateway.yaml")
    adapters = build_adapters(cfg)
    channels = build_channels(cfg)
    assert set(adapters) == set(cfg.models)
    assert isinstance(adapters["gpt-image-2"], GptImageAdapter)
    assert isinstance(adapters["dall-e-2"], DallE2Adapter)
    assert isinstance(adapters["nano-banana-pro"], NanoBananaAdapter)
    up = adapters["nano-banana-pro"].build(make_req(), "gemini-3-pro-image", trace_id="t")
    assert (up.action, up.model) == ("generateContent", "gemini-3-pro-image")
    assert [c.name for c in channels.of("nano-banana-pro")] == ["gemini"]
    assert adapters["gpt-image-2"].model == "gpt-image-2"
    assert adapters["gpt-image-2"].config.upstream_model == "gpt-image-2"
    await channels.aclose()


def _config(adapter: str, upstream: str = "openai") -> GatewayConfig:
    return GatewayConfig(
        upstreams={"openai": upstream_config("openai"), "gemini": upstream_config("gemini")},
        models={"my-model": model_config(adapter, "x", upstream=upstream)},
        default_model="my-model",
    )


def test_unknown_adapter_names_the_model() -> None:
    with pytest.raises(ValueError, match=r"my-model.*'midjourney'"):
        build_adapters(_config("midjourney"))


def test_wrong_channel_protocol_is_refused() -> None:
    with pytest.raises(ValueError, match=r"my-model.*gemini"):
        build_adapters(_config("nano-banana", upstream="openai"))


def test_unknown_channel_is_refused() -> None:
    with pytest.raises(ValueError, match="my-model"):
        _config("gpt-image", upstream="nowhere")


def test_service_hints() -> None:
    """Attributes the edit service reads: native n (pricing) and response-format defaults."""
    assert DallE2Adapter.native_n and not GptImageAdapter.native_n
    assert not NanoBananaAdapter.native_n
    assert DallE2Adapter.default_response_format == "url"
    assert GptImageAdapter.default_response_format is None
    assert NanoBananaAdapter.forced_response_format == "url"
