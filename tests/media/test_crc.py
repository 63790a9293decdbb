"""The PNG probe's CRC-32 (ISA-L when installed) gives zlib's values on every input shape."""

from __future__ import annotations

import os
import zlib

import pytest

from app.media import sniff


def test_isal_is_the_crc_in_use() -> None:
    isal_zlib = pytest.importorskip("isal.isal_zlib")  # a declared dependency
    assert sniff.crc32 is isal_zlib.crc32


@pytest.mark.parametrize("size", [0, 1, 13, 4096, 65_537, 3_000_001])
def test_same_values_as_zlib(size: int) -> None:
    data = os.urandom(size)
    view = memoryview(data)
    assert sniff.crc32(data) == zlib.crc32(data)
    assert sniff.crc32(view[1:]) == zlib.crc32(data[1:])  # the probe passes memoryview slices
