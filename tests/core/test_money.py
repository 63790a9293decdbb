"""Micro-credits: decimal text in, exact integers inside, decimals back out."""

from __future__ import annotations

from decimal import Decimal

import pytest

from app.core.money import MICRO, credits_json, from_micro, to_micro


@pytest.mark.parametrize(
    ("value", "micro"),
    [
        (0, 0),
        (1, 1_000_000),
        ("2.5", 2_500_000),
        (0.1, 100_000),
        (0.14, 140_000),
        (0.2, 200_000),
        ("0.000001", 1),
        (Decimal("0.35"), 350_000),
        (-1.25, -1_250_000),
        ("1e3", 1_000_000_000),
        (" 7 ", 7_000_000),
        (123456789.123456, 123_456_789_123_456),
    ],
)
def test_to_micro_exact(value: object, micro: int) -> None:
    assert to_micro(value) == micro  # type: ignore[arg-type]
    assert isinstance(to_micro(value), int)  # type: ignore[arg-type]


def test_floats_are_read_by_their_decimal_text() -> None:
    # the binary float 0.1 is 0.1000000000000000055...; its repr is what a client typed
    assert to_micro(0.1) + to_micro(0.2) == to_micro(0.3)
    assert to_micro(0.14) * 7 == to_micro("0.98")
    assert from_micro(to_micro(0.1) + to_micro(0.2)) == Decimal("0.3")
    assert credits_json(to_micro(0.14) * 7) == 0.98
    assert credits_json(to_micro(0.1) + to_micro(0.2)) == 0.3


def test_below_a_micro_rounds_half_even() -> None:
    assert to_micro("0.0000005") == 0
    assert to_micro("0.0000015") == 2
    assert to_micro("0.0000025") == 2
    assert to_micro("-0.0000015") == -2


@pytest.mark.parametrize(
    "junk",
    [
        "NaN",
        "nan",
        "-nan",
        "inf",
        "-Infinity",
        float("nan"),
        float("inf"),
        float("-inf"),
        "",
        "abc",
        "1,5",
        "0x10",
        "1e400",
        "1e30",
        Decimal("NaN"),
        Decimal("sNaN"),
        Decimal("Infinity"),
    ],
)
def test_to_micro_refuses_junk(junk: object) -> None:
    with pytest.raises(ValueError):
        to_micro(junk)  # type: ignore[arg-type]


def test_from_micro_and_json() -> None:
    assert from_micro(0) == 0
    assert from_micro(1) == Decimal("0.000001")
    assert from_micro(980_000) == Decimal("0.98")
    assert str(from_micro(2_500_000)) == "2.5"
    assert str(from_micro(100 * MICRO)) == "100"  # plain notation, never 1E+2
    assert str(from_micro(1_000_000 * MICRO)) == "1000000"
    assert str(from_micro(0)) == "0"
    assert from_micro(-1_250_000) == Decimal("-1.25")
    assert credits_json(0) == 0.0
    assert credits_json(1) == 0.000001
    assert credits_json(300_000) == 0.3
    assert credits_json(123_456_789_123_456) == 123456789.123456
    assert isinstance(credits_json(5 * MICRO), float)


@pytest.mark.parametrize("micro", [0, 1, 7, 99, 140_000, 980_000, 10**15, 123_456_789])
def test_round_trip(micro: int) -> None:
    assert to_micro(from_micro(micro)) == micro
    assert to_micro(credits_json(micro)) == micro
