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
import struct
import zlib
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


# The in-flight "1 MB" upload: above the gateway's default spool threshold (1 MiB = 1,048,576 B),
# so it exercises the spooled path, as the 8 MB one does.
INFLIGHT_1MB_BYTES = 1_100_000


def _padded_png(png: bytes, size: int) -> bytes:
    """`png` grown to exactly `size` bytes with a tEXt chunk before IEND (readers skip it)."""
    pad = size - len(png) - 12 - len(b"Comment\0")  # chunk: length, type, data, CRC
    if pad < 0:
        raise ValueError(f"PNG of {len(png)} B is already larger than {size} B")
    data = b"Comment\0" + b"x" * pad
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data
    chunk += struct.pack(">I", zlib.crc32(chunk[4:]) & 0xFFFFFFFF)
    iend = png.rindex(b"IEND") - 4
    return png[:iend] + chunk + png[iend:]


def make_inflight_image(work: Path) -> TestImage:
    """The 1 MB in-flight upload: 600x600 RGB noise padded to exactly 1,100,000 bytes."""
    path = work / "noise-600-1100000.png"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(_padded_png(_noise_png(600, 3), INFLIGHT_1MB_BYTES))
        tmp.replace(path)
    return TestImage("1 MB", path)


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
