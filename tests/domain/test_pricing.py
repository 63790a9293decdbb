"""Every pricing tier rule (docs/CONFIG.md), in exact micro-credits, from the shipped config."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.config import GatewayConfig, ModelConfig, Settings, load_config
from app.domain.pricing import Quote, quote, size_tier

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config() -> GatewayConfig:
    return load_config(Settings(), ROOT / "config" / "gateway.yaml")


@pytest.fixture(scope="module")
def gpt2(config: GatewayConfig) -> ModelConfig:
    return config.models["gpt-image-2"]


ONE_K = [
    "auto",
    "",
    None,
    "1024x1024",
    "1536x1024",
    "1024x1536",
    "1792x1024",
    "1024x1792",
    "1254x1254",
    "1672x941",
    "941x1672",
]
OTHER = [
    "2048x2048",
    "3840x2160",
    "1536x864",
    "2048x1152",
    "2160x3840",
    "1280x720",
    "1024x1040",
    "4096x1024",
]


@pytest.mark.parametrize("size", ONE_K)
def test_gpt_image_2_one_k_tier(gpt2: ModelConfig, size: str | None) -> None:
    q = quote(gpt2, size, 1)
    assert (q.tier, q.unit, q.units, q.per_request) == ("1k", 200_000, 1, False)
    assert q.reserve == 200_000
    assert q.charge(1) == 200_000
    assert size_tier(size) == "1k"


@pytest.mark.parametrize("size", OTHER)
def test_gpt_image_2_other_tier_is_one_and_a_half(gpt2: ModelConfig, size: str) -> None:
    q = quote(gpt2, size, 1)
    assert (q.tier, q.unit, q.reserve) == ("other", 300_000, 300_000)
    assert q.charge(1) == 300_000
    assert size_tier(size) == "other"


@pytest.mark.parametrize(
    ("model", "one_k", "other"),
    [
        ("gpt-image-1", 100_000, 150_000),
        ("gpt-image-1-mini", 40_000, 60_000),
        ("gpt-image-1.5", 120_000, 180_000),
        ("gpt-image-2", 200_000, 300_000),
    ],
)
def test_every_gpt_image_model(config: GatewayConfig, model: str, one_k: int, other: int) -> None:
    m = config.models[model]
    assert quote(m, "1024x1024", 1).reserve == one_k
    assert quote(m, None, 1).reserve == one_k
    assert quote(m, "2048x2048", 1).reserve == other


def test_input_resolution_and_case_do_not_matter(gpt2: ModelConfig) -> None:
    # only the requested size string decides; anything not exactly a 1K spelling is "other"
    assert quote(gpt2, "1024X1024", 1).tier == "other"
    assert quote(gpt2, " 1024x1024", 1).tier == "other"


def test_gpt_image_n_is_one_image(gpt2: ModelConfig) -> None:
    # the adapter treats n as 1 for gpt-image; a quote for 1 image charges one image
    q = quote(gpt2, "auto", 1)
    assert q.charge(0) == 0
    assert q.charge(5) == 200_000  # never more than was reserved


def test_multiplier_rounds_to_whole_micro_credits() -> None:
    m = ModelConfig.model_validate(
        {
            "adapter": "gpt-image",
            "upstream": "openai",
            "upstream_model": "x",
            "price": {"per_image": "0.000003", "other_tier_multiplier": "1.5"},
        }
    )
    assert quote(m, "2048x2048", 1).unit == 4  # 4.5 → 4, banker's rounding
    assert quote(m, "auto", 1).unit == 3


@pytest.mark.parametrize("n", [1, 2, 4, 10])
def test_dall_e_2_per_image_times_n(config: GatewayConfig, n: int) -> None:
    q = quote(config.models["dall-e-2"], "256x256", n)
    assert (q.tier, q.unit, q.units, q.per_request) == ("1k", 20_000, n, False)
    assert q.reserve == 20_000 * n
    assert q.charge(n) == 20_000 * n
    for returned in range(n + 1):
        assert q.charge(returned) == 20_000 * returned
    assert q.charge(n + 3) == q.reserve  # never above the reservation


def test_dall_e_2_has_no_size_tier(config: GatewayConfig) -> None:
    m = config.models["dall-e-2"]
    assert quote(m, "1024x1024", 3).reserve == quote(m, "256x256", 3).reserve == 60_000
    assert quote(m, "512x512", 0).units == 1  # at least one image is reserved


@pytest.mark.parametrize(
    ("model", "price"),
    [("nano-banana", 140_000), ("nano-banana-2", 280_000), ("nano-banana-pro", 350_000)],
)
def test_nano_banana_per_request(config: GatewayConfig, model: str, price: int) -> None:
    m = config.models[model]
    for size, images in [(None, 1), ("2048x2048", 1), ("auto", 4)]:
        q = quote(m, size, images)
        assert (q.tier, q.unit, q.units, q.per_request) == ("request", price, 1, True)
        assert q.reserve == price
    q = quote(m, None, 1)
    assert q.charge(1) == price
    assert q.charge(3) == price  # several images from one request still cost one request
    assert q.charge(0) == 0  # nothing delivered, nothing charged


def test_seven_nano_banana_requests_cost_exactly_0_98(config: GatewayConfig) -> None:
    q = quote(config.models["nano-banana"], None, 1)
    assert sum(q.charge(1) for _ in range(7)) == 980_000


def test_quote_is_a_value() -> None:
    q = Quote(tier="1k", unit=5, units=3, per_request=False)
    assert q.reserve == 15
    assert q == Quote(tier="1k", unit=5, units=3, per_request=False)
