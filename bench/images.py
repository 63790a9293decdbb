"""Test inputs: PNGs made once with Pillow, and request bodies built from them.

The images are random RGB noise so PNG cannot compress them: the "8 MB" upload really moves
8 MB over the wire (a flat image would shrink to a few KB and measure nothing). A seeded RNG
makes the same bytes every run, so results from different runs are comparable.
"""

from __future__ import annotations

import base64
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

BOUNDARY = "----imagegate-bench-7d1f0c2a9b"
PROMPT = "benchmark: add a small red hat"


@dataclass(frozen=True)
class TestImage:
    label: str  # "100 KB" / "8 MB", for the report
    path: Path

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def _noise_png(side: int, seed: int) -> bytes:
    rng = random.Random(seed)
    img = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def make_images(work: Path) -> tuple[TestImage, TestImage]:
    """A ~100 KB and a ~8 MB PNG of noise (185² and 1672² RGB pixels), cached in `work`."""
    out = []
    for label, side, seed in (("100 KB", 185, 1), ("8 MB", 1672, 2)):
        path = work / f"noise-{side}.png"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(_noise_png(side, seed))
            tmp.replace(path)
        out.append(TestImage(label, path))
    return out[0], out[1]


def tiny_png_b64() -> str:
    """A real 16x16 PNG, base64: the image in every mock upstream answer."""
    img = Image.new("RGB", (16, 16), (200, 30, 30))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def multipart_body(image: bytes, model: str, prompt: str = PROMPT) -> tuple[bytes, str]:
    """The same multipart edit body the wrk script builds (for the Python-driven scenarios)."""
    b = BOUNDARY.encode()
    parts = [
        b"--" + b + b'\r\nContent-Disposition: form-data; name="model"\r\n\r\n' + model.encode(),
        b"--" + b + b'\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n' + prompt.encode(),
        b"--"
        + b
        + b'\r\nContent-Disposition: form-data; name="image"; filename="image.png"\r\n'
        + b"Content-Type: image/png\r\n\r\n"
        + image,
    ]
    body = b"\r\n".join(parts) + b"\r\n--" + b + b"--\r\n"
    return body, f"multipart/form-data; boundary={BOUNDARY}"


def gemini_body(image: bytes, prompt: str = PROMPT) -> bytes:
    """What a client would send Gemini directly for the same edit (the direct side of (g))."""
    return json.dumps(
        {
            "contents": [
                {
                    "role": "user",
                    "parts": [
                        {"text": prompt},
                        {
                            "inlineData": {
                                "mimeType": "image/png",
                                "data": base64.b64encode(image).decode("ascii"),
                            }
                        },
                    ],
                }
            ],
            "generationConfig": {"responseModalities": ["IMAGE"]},
        }
    ).encode()
