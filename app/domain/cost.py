"""What a request cost us upstream, in integer micro-dollars, from the upstream's reported usage.

The upstream bills tokens by kind (gpt-image models, Gemini) or images by size (dall-e-2).
Prices are read once from the config's `cost:` (USD per million tokens, USD per image) into
integers: a price of P USD per million tokens is exactly P x 10^6 pico-dollars per token, so a
cost is a sum of integer products, rounded once (half to even) to the micro-dollar. No float
ever touches it. The formulas (docs/COST.md):

- OpenAI `usage`: input text tokens x text input + input image tokens x image input + output
  image tokens (`output_tokens_details.image_tokens`, else all `output_tokens`) x image output
  + output text tokens x text output (when reported; no text-output price means 0).
- Gemini `usageMetadata`: prompt text x text input + prompt image x image input + candidate
  image x image output + (candidate text + thoughts) x text output. Without per-modality
  details the whole prompt counts as text and all candidate tokens as image.

A request whose upstream reported no usage is costed from `per_image` and marked estimated;
a model priced only per image (dall-e-2) is billed exactly that way and is not an estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.core.config import CostConfig, GatewayConfig
from app.core.money import to_micro

#: Size assumed for a per-size price table when the request named none (OpenAI's default).
DEFAULT_SIZE = "1024x1024"
_PICO_PER_MICRO = 1_000_000


@dataclass(slots=True, frozen=True)
class Cost:
    micro_usd: int
    estimated: bool


@dataclass(slots=True, frozen=True)
class Tokens:
    """Token counts by the four kinds that have a price."""

    text_in: int = 0
    image_in: int = 0
    text_out: int = 0
    image_out: int = 0


@dataclass(slots=True, frozen=True)
class Prices:
    """A model's upstream prices as integers: pico-dollars per token, micro-dollars per image."""

    text_in: int | None
    image_in: int | None
    text_out: int | None
    image_out: int | None
    per_image: int | None  # one price for every size ...
    per_size: dict[str, int] | None  # ... or a table by size

    @classmethod
    def from_config(cls, cfg: CostConfig) -> Prices:
        def tok(v: Any) -> int | None:  # USD per Mtok -> micro-USD per Mtok == pico-USD/token
            return None if v is None else to_micro(v)

        table = cfg.per_image if isinstance(cfg.per_image, dict) else None
        flat = None if isinstance(cfg.per_image, dict) else cfg.per_image
        return cls(
            text_in=tok(cfg.text_input_per_mtok),
            image_in=tok(cfg.image_input_per_mtok),
            text_out=tok(cfg.text_output_per_mtok),
            image_out=tok(cfg.image_output_per_mtok),
            per_image=None if flat is None else to_micro(flat),
            per_size=None if table is None else {k: to_micro(v) for k, v in table.items()},
        )

    @property
    def by_tokens(self) -> bool:
        return self.image_out is not None

    def image_price(self, size: str | None) -> int:
        """Micro-dollars per image at `size`; an unknown size takes the table's highest price."""
        if self.per_size is None:
            return self.per_image or 0
        price = self.per_size.get(size or DEFAULT_SIZE)
        return price if price is not None else max(self.per_size.values())


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else 0


def openai_tokens(usage: dict[str, Any]) -> Tokens:
    inp = usage.get("input_tokens_details")
    out = usage.get("output_tokens_details")
    if isinstance(inp, dict):
        text_in, image_in = _int(inp.get("text_tokens")), _int(inp.get("image_tokens"))
    else:
        text_in, image_in = _int(usage.get("input_tokens")), 0
    if isinstance(out, dict) and "image_tokens" in out:
        image_out, text_out = _int(out.get("image_tokens")), _int(out.get("text_tokens"))
    else:
        image_out, text_out = _int(usage.get("output_tokens")), 0
    return Tokens(text_in, image_in, text_out, image_out)


def _by_modality(details: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    if isinstance(details, list):
        for d in details:
            if isinstance(d, dict) and isinstance(d.get("modality"), str):
                m = d["modality"]
                out[m] = out.get(m, 0) + _int(d.get("tokenCount"))
    return out


def gemini_tokens(usage: dict[str, Any]) -> Tokens:
    prompt = _by_modality(usage.get("promptTokensDetails"))
    cand = _by_modality(usage.get("candidatesTokensDetails"))
    thoughts = _int(usage.get("thoughtsTokenCount"))
    if prompt:
        image_in = prompt.get("IMAGE", 0)
        text_in = sum(prompt.values()) - image_in
    else:
        text_in, image_in = _int(usage.get("promptTokenCount")), 0
    if cand:
        image_out = cand.get("IMAGE", 0)
        text_out = sum(cand.values()) - image_out
    else:
        image_out, text_out = _int(usage.get("candidatesTokenCount")), 0
    return Tokens(text_in, image_in, text_out + thoughts, image_out)


def tokens_of(usage: dict[str, Any] | None) -> Tokens | None:
    """The priced token counts of an OpenAI `usage` or a Gemini `usageMetadata`, else None."""
    if not isinstance(usage, dict):
        return None
    if "input_tokens" in usage or "output_tokens" in usage:
        return openai_tokens(usage)
    if "promptTokenCount" in usage or "candidatesTokenCount" in usage:
        return gemini_tokens(usage)
    return None


def _round_pico(pico: int) -> int:
    """Pico-dollars to micro-dollars, half to even."""
    q, r = divmod(pico, _PICO_PER_MICRO)
    if r * 2 > _PICO_PER_MICRO or (r * 2 == _PICO_PER_MICRO and q % 2):
        q += 1
    return q


def upstream_cost(
    prices: Prices | None, usage: dict[str, Any] | None, *, images: int, size: str | None
) -> Cost:
    """The upstream cost of one request that returned `images` images."""
    if prices is None:
        return Cost(0, True)
    tokens = tokens_of(usage) if prices.by_tokens else None
    if tokens is None:
        return Cost(max(0, images) * prices.image_price(size), prices.by_tokens)
    pico = (
        tokens.text_in * (prices.text_in or 0)
        + tokens.image_in * (prices.image_in or 0)
        + tokens.image_out * (prices.image_out or 0)
        + tokens.text_out * (prices.text_out or 0)
    )
    return Cost(_round_pico(pico), False)


class CostBook:
    """The prices in force for each (model, channel), read from the config once."""

    def __init__(self, config: GatewayConfig) -> None:
        self._config = config
        self._cache: dict[tuple[str, str], Prices | None] = {}

    def prices(self, model: str, channel: str) -> Prices | None:
        k = (model, channel)
        if k not in self._cache:
            cfg = self._config.cost_for(model, channel)
            self._cache[k] = None if cfg is None else Prices.from_config(cfg)
        return self._cache[k]

    def cost(
        self,
        model: str,
        channel: str,
        usage: dict[str, Any] | None,
        *,
        images: int,
        size: str | None,
    ) -> Cost:
        return upstream_cost(self.prices(model, channel), usage, images=images, size=size)
