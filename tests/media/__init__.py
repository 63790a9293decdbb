"""Tests of app.media; helpers shared by its test modules live here."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterable
from typing import Any

import httpcore
from PIL import Image as PILImage


def encode(mode: str, fmt: str, size: tuple[int, int] = (37, 21), **save: object) -> bytes:
    """A real image made with Pillow (a gradient, so encoders produce non-trivial data)."""
    ramp = PILImage.linear_gradient("L").resize(size)
    img = ramp.convert(mode)
    if mode in ("RGBA", "LA"):
        img.putalpha(ramp)  # real transparency: encoders drop an all-opaque alpha channel
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def png_chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def png_header_only(width: int, height: int, color: int = 2) -> bytes:
    """A PNG signature and a valid IHDR claiming `width` x `height`, one tiny IDAT, IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


PUBLIC_IP = "93.184.216.34"  # used in fake DNS answers; never contacted (see LoopbackBackend)


class LoopbackBackend(httpcore.AsyncNetworkBackend):
    """Records the address each connection was pinned to; connects to 127.0.0.1 only."""

    def __init__(self) -> None:
        self.inner = httpcore.AnyIOBackend()
        self.connects: list[tuple[str, int]] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        return await self.inner.connect_tcp(
            "127.0.0.1", port, timeout=timeout, socket_options=socket_options
        )

    async def connect_unix_socket(self, *args: Any, **kw: Any) -> httpcore.AsyncNetworkStream:
        raise AssertionError("no unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)
