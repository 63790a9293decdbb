"""Upstream cost: exact integer micro-dollars from reported usage, by the documented formulas."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.core.config import ConfigError, CostConfig, Settings, load_config, parse_config
from app.domain.cost import CostBook, Prices, gemini_tokens, openai_tokens, upstream_cost

GPT_IMAGE_1 = CostConfig(
    text_input_per_mtok=Decimal("5.00"),
    image_input_per_mtok=Decimal("10.00"),
    text_output_per_mtok=Decimal("10.00"),
    image_output_per_mtok=Decimal("40.00"),
    per_image=Decimal("0.042"),
)
NANO_BANANA = CostConfig(
    text_input_per_mtok=Decimal("0.30"),
    image_input_per_mtok=Decimal("0.30"),
    text_output_per_mtok=Decimal("2.50"),
    image_output_per_mtok=Decimal("30.00"),
    per_image=Decimal("0.039"),
)
DALL_E_2 = CostConfig(
    per_image={
        "256x256": Decimal("0.016"),
        "512x512": Decimal("0.018"),
        "1024x1024": Decimal("0.020"),
    }
)


def test_openai_usage_exact() -> None:
    usage = {
        "total_tokens": 4537, "input_tokens": 377, "output_tokens": 4160,
        "input_tokens_details": {"text_tokens": 10, "image_tokens": 367},
        "output_tokens_details": {"image_tokens": 4150, "text_tokens": 10},
    }  # fmt: skip
    cost = upstream_cost(Prices.from_config(GPT_IMAGE_1), usage, images=1, size="1024x1024")
    # $P per million tokens is P micro-dollars per token: 10*5 + 367*10 + 4150*40 + 10*10
    assert (cost.micro_usd, cost.estimated) == (169_820, False)


def test_openai_stream_usage_without_output_details_prices_all_output_as_image() -> None:
    usage = {"total_tokens": 100, "input_tokens": 50, "output_tokens": 50,
             "input_tokens_details": {"text_tokens": 10, "image_tokens": 40}}  # fmt: skip
    assert openai_tokens(usage).image_out == 50
    cost = upstream_cost(Prices.from_config(GPT_IMAGE_1), usage, images=1, size=None)
    assert cost.micro_usd == 10 * 5 + 40 * 10 + 50 * 40 == 2_450


def test_gemini_usage_metadata_exact() -> None:
    meta = {
        "promptTokenCount": 568, "candidatesTokenCount": 1290, "thoughtsTokenCount": 180,
        "totalTokenCount": 2038,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 8},
                                {"modality": "IMAGE", "tokenCount": 560}],
        "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1290}],
    }  # fmt: skip
    t = gemini_tokens(meta)
    assert (t.text_in, t.image_in, t.image_out, t.text_out) == (8, 560, 1290, 180)
    cost = upstream_cost(Prices.from_config(NANO_BANANA), meta, images=1, size=None)
    # (8*0.30 + 560*0.30 + 1290*30 + 180*2.50) micro-dollars = 39_320.4 -> 39_320
    assert (cost.micro_usd, cost.estimated) == (39_320, False)


def test_gemini_without_details_counts_prompt_as_text_and_candidates_as_image() -> None:
    t = gemini_tokens({"promptTokenCount": 14, "candidatesTokenCount": 747})
    assert (t.text_in, t.image_in, t.image_out, t.text_out) == (14, 0, 747, 0)


def test_rounding_is_half_to_even_on_exact_integers() -> None:
    prices = Prices.from_config(NANO_BANANA)
    # 5 text tokens * 0.30 = 1.5 micro-dollars -> 2; 15 -> 4.5 -> 4
    assert upstream_cost(prices, {"promptTokenCount": 5}, images=0, size=None).micro_usd == 2
    assert upstream_cost(prices, {"promptTokenCount": 15}, images=0, size=None).micro_usd == 4


def test_no_usage_is_an_estimate_from_per_image() -> None:
    prices = Prices.from_config(GPT_IMAGE_1)
    assert upstream_cost(prices, None, images=2, size=None) == upstream_cost(
        prices, {"unexpected": 1}, images=2, size=None
    )
    cost = upstream_cost(prices, None, images=2, size=None)
    assert (cost.micro_usd, cost.estimated) == (84_000, True)
    assert upstream_cost(prices, None, images=0, size=None).estimated  # a failure: $0, estimated
    assert upstream_cost(None, None, images=1, size=None) == upstream_cost(
        None, {"input_tokens": 5}, images=1, size=None
    )
    assert upstream_cost(None, None, images=1, size=None).estimated  # no cost: configured


@pytest.mark.parametrize(
    ("size", "n", "micro"),
    [("256x256", 1, 16_000), ("512x512", 3, 54_000), ("1024x1024", 2, 40_000), (None, 1, 20_000)],
)
def test_dall_e_2_by_size_is_exact_not_estimated(size: str | None, n: int, micro: int) -> None:
    cost = upstream_cost(Prices.from_config(DALL_E_2), None, images=n, size=size)
    assert (cost.micro_usd, cost.estimated) == (micro, False)


@given(
    st.integers(0, 10**7), st.integers(0, 10**7), st.integers(0, 10**7), st.integers(0, 10**7),
    st.decimals(min_value=0, max_value=1000, places=6),
)  # fmt: skip
def test_cost_is_the_exact_decimal_sum_rounded_once(
    text_in: int, image_in: int, text_out: int, image_out: int, price: Decimal
) -> None:
    cfg = CostConfig(
        text_input_per_mtok=price,
        image_input_per_mtok=price * 2,
        text_output_per_mtok=price * 3,
        image_output_per_mtok=price * 4,
        per_image=Decimal(1),
    )
    usage = {
        "input_tokens": text_in + image_in,
        "output_tokens": text_out + image_out,
        "input_tokens_details": {"text_tokens": text_in, "image_tokens": image_in},
        "output_tokens_details": {"text_tokens": text_out, "image_tokens": image_out},
    }
    exact = (text_in + 2 * image_in + 3 * text_out + 4 * image_out) * price  # micro-dollars
    expected = int(exact.quantize(Decimal(1), rounding="ROUND_HALF_EVEN"))
    assert upstream_cost(Prices.from_config(cfg), usage, images=1, size=None).micro_usd == expected


def test_channel_override_replaces_only_the_fields_it_gives() -> None:
    text = """
upstreams:
  openai-a: {kind: openai, base_url: "http://a"}
  openai-b: {kind: openai, base_url: "http://b",
             cost: {gpt-image-1: {image_output_per_mtok: 20.00}}}
models:
  gpt-image-1: {adapter: gpt-image, upstream: openai-a, upstream_model: gpt-image-1,
                price: {per_image: 0.1},
                cost: {text_input_per_mtok: 5, image_input_per_mtok: 10,
                       image_output_per_mtok: 40, per_image: 0.042}}
default_model: gpt-image-1
"""
    book = CostBook(parse_config(text, Settings()))
    usage = {"input_tokens": 0, "output_tokens": 1000}
    assert book.cost("gpt-image-1", "openai-a", usage, images=1, size=None).micro_usd == 40_000
    assert book.cost("gpt-image-1", "openai-b", usage, images=1, size=None).micro_usd == 20_000
    assert book.cost("gpt-image-1", "openai-b", None, images=1, size=None).micro_usd == 42_000


@pytest.mark.parametrize(
    ("cost", "message"),
    [
        ("{per_image: 0.1, image_output_per_mtok: 4}", "token prices need"),
        ("{text_input_per_mtok: 1, image_input_per_mtok: 1, image_output_per_mtok: 1}",
         "per_image is required"),
        ("{per_image: -1}", "prices must be >= 0"),
        ("{per_image: {}}", "at least one size"),
        ("{per_image: 0.1, bogus: 1}", "Extra inputs"),
    ],
)  # fmt: skip
def test_bad_cost_config_is_refused(cost: str, message: str) -> None:
    text = f"""
upstreams: {{openai: {{kind: openai, base_url: "http://a"}}}}
models:
  m: {{adapter: gpt-image, upstream: openai, upstream_model: m, price: {{per_image: 1}},
      cost: {cost}}}
default_model: m
"""
    with pytest.raises(ConfigError, match=message):
        parse_config(text, Settings())


def test_override_for_an_unknown_model_is_refused() -> None:
    text = """
upstreams: {openai: {kind: openai, base_url: "http://a", cost: {nope: {per_image: 1}}}}
models: {m: {adapter: gpt-image, upstream: openai, upstream_model: m, price: {per_image: 1}}}
default_model: m
"""
    with pytest.raises(ConfigError, match=r"upstreams\.openai\.cost\.nope: unknown model"):
        parse_config(text, Settings())


def test_shipped_config_prices_every_model() -> None:
    config = load_config(Settings(), None)
    book = CostBook(config)
    for name, model in config.models.items():
        assert model.cost is not None, name
        assert book.prices(name, model.upstream) is not None
    # gpt-image-1's list prices: $5 / $10 / $40 per million tokens
    usage = {"input_tokens": 2, "output_tokens": 1,
             "input_tokens_details": {"text_tokens": 1, "image_tokens": 1}}  # fmt: skip
    assert book.cost("gpt-image-1", "openai", usage, images=1, size=None).micro_usd == 5 + 10 + 40
    big = {"input_tokens": 10**6, "output_tokens": 10**6,
           "input_tokens_details": {"text_tokens": 10**6, "image_tokens": 0}}  # fmt: skip
    assert book.cost("gpt-image-1", "openai", big, images=1, size=None).micro_usd == 45_000_000
