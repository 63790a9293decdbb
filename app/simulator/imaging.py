"""Real images for a fake upstream: inspect inputs by their bytes, render visibly edited outputs.

Outputs are derived from the first input (cropped and resized to the requested size), tinted
with a colour hashed from the prompt, and carry the prompt as a caption, so a human looking at a
result can tell the edit went through. Rendering is kept cheap (bilinear resize with reducing
gap, PNG compress level 1, WEBP method 0) and memoised, because the benchmark uses the simulator
as its "fast local upstream" and sends the same inputs over and over.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import io
import textwrap
import threading
from collections import OrderedDict
from dataclasses import dataclass

from PIL import Image, ImageChops, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

#: Decoded pixel cap: refuses decompression bombs before any pixel is decoded.
MAX_INPUT_PIXELS = 64 * 1024 * 1024

MIME_BY_FORMAT: dict[str, str] = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
    "heif": "image/heif",
}
FORMAT_BY_MIME: dict[str, str] = {mime: fmt for fmt, mime in MIME_BY_FORMAT.items()}
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


class ImageDecodeError(ValueError):
    """The bytes are not a readable image (or exceed the pixel cap)."""


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What the bytes really are, independent of any declared name or content type."""

    format: str
    width: int
    height: int
    mode: str
    has_alpha: bool
    size: int
    sha256: str

    @property
    def mime(self) -> str:
        return MIME_BY_FORMAT.get(self.format, f"image/{self.format}")


def inspect_image(data: bytes, *, verify: bool = True, sha256: str | None = None) -> ImageInfo:
    """Identify an image by its bytes; with ``verify`` also check its structure (PNG CRCs…).

    ``sha256`` may be passed when the caller already hashed ``data``.
    """
    digest = sha256 or hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = (im.format or "").lower()
            width, height = im.size
            mode = im.mode
            has_alpha = mode in _ALPHA_MODES or "transparency" in im.info
            if width * height > MAX_INPUT_PIXELS:
                raise ImageDecodeError(f"image has too many pixels ({width}x{height})")
            if verify:
                im.verify()
    except ImageDecodeError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(str(exc) or type(exc).__name__) from exc
    except Image.DecompressionBombError as exc:  # pragma: no cover - caught by the cap first
        raise ImageDecodeError(str(exc)) from exc
    return ImageInfo(fmt, width, height, mode, has_alpha, len(data), digest)


def decode_data_url(url: str) -> tuple[str, bytes]:
    """`data:image/png;base64,...` → (mime, bytes); raises ValueError when malformed."""
    if not url.startswith("data:"):
        raise ValueError("not a data URL")
    head, sep, payload = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise ValueError("data URL must be base64-encoded")
    mime = head[5:].split(";", 1)[0].strip().lower()
    try:
        return mime, base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("invalid base64 in data URL") from exc


def prompt_color(prompt: str) -> tuple[int, int, int]:
    """A stable, saturated colour per prompt: different prompts give visibly different tints."""
    digest = hashlib.sha256(prompt.encode()).digest()
    r, g, b = digest[0], digest[1], digest[2]
    lo, hi = min(r, g, b), max(r, g, b)
    if hi - lo < 96:  # push greyish colours apart so the tint is visible
        r, g, b = (255 if c == hi else 40 if c == lo else c for c in (r, g, b))
    return r, g, b


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, ImportError, TypeError):  # Pillow without FreeType
        return ImageFont.load_default()


@dataclass(frozen=True, slots=True)
class RenderSpec:
    """Everything that determines an output image (also its cache key)."""

    source_sha256: str | None
    prompt: str
    width: int
    height: int
    format: str = "png"  # png | jpeg | webp
    index: int = 0
    transparent: bool = False
    compression: int | None = None
    partials: int = 0


@dataclass(frozen=True, slots=True)
class Rendered:
    final: bytes
    #: progressively sharper previews (OpenAI partial images, Gemini thought image)
    partials: tuple[bytes, ...]


def _base_image(source: bytes | None, spec: RenderSpec) -> Image.Image:
    size = (spec.width, spec.height)
    if source is None:
        color = prompt_color(spec.prompt)
        gradient = Image.linear_gradient("L").resize(size, Image.Resampling.BILINEAR)
        return ImageOps.colorize(gradient, black=(20, 20, 30), white=color)
    try:
        opened = Image.open(io.BytesIO(source))
        if opened.width * opened.height > MAX_INPUT_PIXELS:
            raise ImageDecodeError("image has too many pixels")
        if opened.format == "JPEG":
            opened.draft("RGB", size)  # let libjpeg decode at a reduced scale: much faster
        opened.load()
    except ImageDecodeError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(str(exc) or type(exc).__name__) from exc
    im = opened.convert("RGBA" if spec.transparent else "RGB")
    # centre-crop to the target aspect, then resize (reducing_gap keeps big inputs cheap)
    src_w, src_h = im.size
    target = spec.width / spec.height
    if src_w / src_h > target:
        crop_w = src_h * target
        box = ((src_w - crop_w) / 2, 0.0, (src_w + crop_w) / 2, float(src_h))
    else:
        crop_h = src_w / target
        box = (0.0, (src_h - crop_h) / 2, float(src_w), (src_h + crop_h) / 2)
    return im.resize(size, Image.Resampling.BILINEAR, box=box, reducing_gap=2.0)


def _decorate(im: Image.Image, spec: RenderSpec) -> Image.Image:
    color = prompt_color(spec.prompt)
    rgb = im.convert("RGB") if im.mode != "RGB" else im
    tinted = Image.blend(rgb, Image.new("RGB", im.size, color), 0.35)
    draw = ImageDraw.Draw(tinted)
    w, h = tinted.size
    # with a transparent background the outer border is cut away: keep the caption inside it
    border = max(4, min(w, h) // 16) if spec.transparent else 0
    font_px = max(10, min(w, h) // 28)
    font = _font(font_px)
    chars = max(8, int((w - 2 * border) / (font_px * 0.6)))
    lines = textwrap.wrap(spec.prompt.strip() or "(empty prompt)", chars)[:3] or [""]
    band = min(h // 2, (len(lines) + 1) * (font_px + 6) + 10)
    bottom = h - border
    draw.rectangle((border, bottom - band, w - border, bottom), fill=(0, 0, 0))
    y = bottom - band + 6
    tag = "imagegate simulator" + (f"  #{spec.index + 1}" if spec.index else "")
    draw.text((border + 8, y), tag, font=font, fill=color)
    for line in lines:
        y += font_px + 6
        draw.text((border + 8, y), line, font=font, fill=(255, 255, 255))
    if spec.transparent:
        alpha = im.getchannel("A") if im.mode == "RGBA" else Image.new("L", im.size, 255)
        cut = Image.new("L", im.size, 0)
        ImageDraw.Draw(cut).rectangle((border, border, w - border - 1, h - border - 1), fill=255)
        tinted.putalpha(ImageChops.darker(alpha, cut))
    return tinted


def encode(im: Image.Image, fmt: str, compression: int | None = None) -> bytes:
    """Encode fast: PNG level 1, JPEG/WEBP at `output_compression` (default 90)."""
    out = io.BytesIO()
    quality = 90 if compression is None else max(1, min(100, compression))
    if fmt == "jpeg":
        im.convert("RGB").save(out, "JPEG", quality=min(quality, 95))
    elif fmt == "webp":
        im.save(out, "WEBP", quality=quality, method=0)
    else:
        im.save(out, "PNG", compress_level=1)
    return out.getvalue()


def _render(source: bytes | None, spec: RenderSpec) -> Rendered:
    final = _decorate(_base_image(source, spec), spec)
    partials = []
    for step in range(spec.partials):
        factor = 2 ** (4 - min(step, 3))  # 16, 8, 4, 2: each preview sharper than the last
        small = final.resize(
            (max(1, spec.width // factor), max(1, spec.height // factor)),
            Image.Resampling.BILINEAR,
        )
        preview = small.resize(final.size, Image.Resampling.NEAREST)
        partials.append(encode(preview, spec.format, spec.compression))
    return Rendered(encode(final, spec.format, spec.compression), tuple(partials))


class _RenderCache:
    """Small LRU of rendered outputs keyed by :class:`RenderSpec` (bounded in bytes too)."""

    def __init__(self, max_entries: int = 64, max_bytes: int = 256 * 1024 * 1024) -> None:
        self._items: OrderedDict[RenderSpec, Rendered] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.max_entries = max_entries
        self.max_bytes = max_bytes

    @staticmethod
    def _size(item: Rendered) -> int:
        return len(item.final) + sum(len(p) for p in item.partials)

    def get(self, spec: RenderSpec) -> Rendered | None:
        with self._lock:
            item = self._items.get(spec)
            if item is not None:
                self._items.move_to_end(spec)
            return item

    def put(self, spec: RenderSpec, item: Rendered) -> None:
        size = self._size(item)
        if size > self.max_bytes // 8:
            return
        with self._lock:
            if spec in self._items:
                return
            self._items[spec] = item
            self._bytes += size
            while len(self._items) > self.max_entries or self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= self._size(old)


_cache = _RenderCache()


def render(source: bytes | None, spec: RenderSpec) -> Rendered:
    """Render (or fetch from the cache) the output described by ``spec``.

    ``source`` must hash to ``spec.source_sha256``; raises :class:`ImageDecodeError` when the
    source cannot be decoded (a truncated file passes a header check but fails here).
    """
    cached = _cache.get(spec)
    if cached is not None:
        return cached
    item = _render(source, spec)
    _cache.put(spec, item)
    return item
