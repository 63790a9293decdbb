"""Credits are decimals to clients and exact integers (micro-credits) inside.

Floats never touch a balance: 0.14 x 7 must be exactly 0.98, so prices are parsed from their
decimal text into integers once, at config load, and every sum after that is integer math.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

MICRO = 1_000_000
_QUANTUM = Decimal(1).scaleb(-6)


def to_micro(value: Decimal | int | float | str) -> int:
    """Parse a client-facing credit amount into micro-credits (exact for up to 6 decimals)."""
    try:
        dec = Decimal(str(value)) if not isinstance(value, Decimal) else value
    except InvalidOperation as exc:
        raise ValueError(f"not a number: {value!r}") from exc
    if not dec.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return int((dec * MICRO).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def from_micro(micro: int) -> Decimal:
    """Micro-credits back to a Decimal with at most 6 places (for display and JSON)."""
    return (Decimal(micro) / MICRO).quantize(_QUANTUM).normalize() if micro else Decimal(0)


def credits_json(micro: int) -> float:
    """A JSON-friendly number for a micro-credit amount (exact at 6 decimals)."""
    return float(from_micro(micro))
