"""Seed inputs: valid bodies and images, so the fuzzer starts from the interesting shapes."""

from __future__ import annotations

import io
from typing import Any

import httpx
import orjson
from PIL import Image

from fuzz.targets import BOUNDARY

_TINY_PNG_ALPHA = 4  # side of the seed images: small keeps the inputs short


def _multipart(data: dict[str, str], files: list[tuple[str, tuple[str, bytes, str]]]) -> bytes:
    request = httpx.Request(
        "POST",
        "http://gateway/v1/images/edits",
        headers={"content-type": f"multipart/form-data; boundary={BOUNDARY.decode()}"},
        data=data,
        files=files,
    )
    return request.read()


def images() -> list[bytes]:
    out = []
    side = _TINY_PNG_ALPHA
    kinds: list[tuple[str, str, dict[str, Any]]] = [
        ("RGB", "PNG", {}),
        ("RGBA", "PNG", {}),
        ("L", "PNG", {}),
        ("P", "PNG", {"transparency": 0}),
        ("RGB", "JPEG", {"quality": 50}),
        ("RGB", "JPEG", {"quality": 50, "progressive": True}),
        ("RGB", "WEBP", {"quality": 50}),
        ("RGBA", "WEBP", {"quality": 50}),
        ("RGB", "WEBP", {"lossless": True}),
    ]
    for mode, fmt, extra in kinds:
        buf = io.BytesIO()
        Image.new(mode, (side, side + 1)).save(buf, fmt, **extra)
        out.append(buf.getvalue())
    return out


def bodies() -> list[bytes]:
    """Multipart and JSON bodies, each behind the mode byte `fuzz.targets.split_input` reads."""
    png = images()[0]
    multipart = [
        _multipart({"prompt": "a cat", "model": "gpt-image-1"}, [("image", ("a.png", png, "i"))]),
        _multipart(
            {"prompt": "p", "n": "2", "size": "1024x1024", "stream": "true"},
            [("image[]", ("a.png", png, "i")), ("image[]", ("b.png", png, "i"))],
        ),
        _multipart(
            {"prompt": "p", "image[0]": "https://example.com/a.png", "mask": "data:image/png;,x"},
            [],
        ),
        _multipart({"prompt": "p"}, [("image", ("a.png", png, "i")), ("mask", ("m", png, "i"))]),
    ]
    json = [
        orjson.dumps({"prompt": "p", "images": [{"image_url": "https://example.com/a.png"}]}),
        orjson.dumps({"prompt": "p", "image": "data:image/png;base64,AAAA", "n": 1}),
        orjson.dumps({"prompt": "p", "image": ["https://a/b", "http://c/d"], "stream": False}),
    ]
    # Mode byte: bit 7 picks JSON, the low bits a chunk size.
    return [bytes([7]) + b for b in multipart] + [bytes([0x80 | 5]) + b for b in json]


SEEDS = {"multipart": bodies, "sniff": images}
