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
    try:
        return int((dec * MICRO).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
    except InvalidOperation as exc:  # more digits than the decimal context holds
        raise ValueError(f"number out of range: {value!r}") from exc


def from_micro(micro: int) -> Decimal:
    """Micro-credits back to a Decimal with at most 6 places (for display and JSON)."""
    dec = (Decimal(micro) / MICRO).quantize(_QUANTUM).normalize()
    # normalize() writes whole hundreds as 1E+2; keep plain notation for display
    return dec.quantize(Decimal(1)) if dec.as_tuple().exponent > 0 else dec  # type: ignore[operator]


def credits_json(micro: int) -> float:
    """A JSON-friendly number for a micro-credit amount (exact at 6 decimals)."""
    return float(from_micro(micro))
