"""What an edit costs, in micro-credits, from the config's prices and the request's fields.

Prices (docs/CONFIG.md, "models"): gpt-image models cost `per_image` for the 1K tier
(auto, empty/omitted, the 1K sizes and the three upstream 1K aliases) and
`per_image x other_tier_multiplier` for any other size; the input image's resolution never
matters. dall-e-2 costs `per_image x n`, settled on the images actually returned. The
nano-banana family costs `per_request`.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

from app.core.config import ModelConfig

ONE_K_SIZES = frozenset(
    {
        "auto",
        "",
        "1024x1024",
        "1536x1024",
        "1024x1536",
        "1792x1024",
        "1024x1792",
        "1254x1254",
        "1672x941",
        "941x1672",
    }
)


@dataclass(slots=True, frozen=True)
class Quote:
    """The price of one request: what to reserve, and how to settle on the images returned."""

    tier: str  # "1k" | "other" | "request"
    unit: int  # micro-credits per image (per_image) or per request
    units: int  # images asked for (per_image) or 1 (per_request)
    per_request: bool

    @property
    def reserve(self) -> int:
        return self.unit * self.units

    def charge(self, images_returned: int) -> int:
        """The true charge: per request, or per image actually returned (never above reserve)."""
        if self.per_request:
            return self.unit if images_returned > 0 else 0
        return self.unit * min(images_returned, self.units)


def size_tier(size: str | None) -> str:
    return "1k" if size is None or size in ONE_K_SIZES else "other"


def quote(model: ModelConfig, size: str | None, images: int) -> Quote:
    """Price a request for `images` output images at the requested `size` string."""
    price = model.price
    if price.per_request is not None:
        return Quote(tier="request", unit=price.per_request_micro, units=1, per_request=True)
    unit = price.per_image_micro
    tier = "1k"
    if price.other_tier_multiplier is not None:
        tier = size_tier(size)
        if tier == "other":
            scaled = Decimal(unit) * price.other_tier_multiplier
            unit = int(scaled.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
    return Quote(tier=tier, unit=unit, units=max(1, images), per_request=False)
