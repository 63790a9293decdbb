"""Helpers shared by the simulator tests: tiny real images and auth headers."""

from __future__ import annotations

import base64
import io

from PIL import Image

OPENAI_AUTH = {"Authorization": "Bearer sk-sim-test-abcd"}
GEMINI_AUTH = {"x-goog-api-key": "AIzaSy-sim-test-wxyz"}


def image_bytes(
    width: int = 64,
    height: int = 64,
    fmt: str = "PNG",
    mode: str = "RGB",
    color: tuple[int, ...] = (20, 120, 220),
) -> bytes:
    if mode == "RGBA" and len(color) == 3:
        color = (*color, 255)
    out = io.BytesIO()
    Image.new(mode, (width, height), color).save(out, fmt)
    return out.getvalue()


def png(width: int = 64, height: int = 64, mode: str = "RGB") -> bytes:
    return image_bytes(width, height, "PNG", mode)


def decode_b64_image(data: str) -> Image.Image:
    im = Image.open(io.BytesIO(base64.b64decode(data)))
    im.load()
    return im


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
