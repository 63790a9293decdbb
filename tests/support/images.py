"""Real images made with Pillow for tests."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw


def png(
    width: int = 64,
    height: int = 64,
    *,
    color: tuple[int, ...] = (200, 60, 40),
    alpha: bool = False,
) -> bytes:
    mode = "RGBA" if alpha else "RGB"
    fill = (*color[:3], 255) if alpha else color[:3]
    img = Image.new(mode, (width, height), fill)
    ImageDraw.Draw(img).ellipse(
        (width // 4, height // 4, width * 3 // 4, height * 3 // 4),
        fill=(20, 120, 220, 255)[: len(mode)],
    )
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def mask_png(width: int = 64, height: int = 64) -> bytes:
    """Fully transparent in the middle (where the edit goes), opaque elsewhere."""
    img = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    ImageDraw.Draw(img).rectangle(
        (width // 4, height // 4, width * 3 // 4, height * 3 // 4), fill=(0, 0, 0, 0)
    )
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def jpeg(width: int = 64, height: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 90)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def webp(width: int = 64, height: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (90, 10, 200)).save(buf, "WEBP")
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img
