"""Identify an image by its bytes and check its structure without decoding a single pixel.

Every edit request passes each input through `probe`, so it has to be cheap (a few ms for an
8 MB file) and safe on hostile input:

- the format comes from the magic bytes only, never from a file name or declared content type;
- width and height come from the header and are checked against the pixel cap *before* anything
  else is read, so a 30000x30000 decompression bomb costs microseconds, not gigabytes;
- truncation and corruption are found by walking the container structure (PNG chunks and their
  CRCs up to IEND, JPEG marker segments up to the scan and an EOI after it, WEBP's RIFF length
  and chunk list) instead of a full decode;
- whatever goes wrong inside becomes a 400 `bad_request` naming the parameter, never a 500.

The structural checks are deliberately not a full validation: a file whose compressed pixel data
is damaged but whose container is intact passes here and fails at the upstream, which answers
with its own 400. That trade keeps the per-request cost flat.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable

try:  # ISA-L's CRC-32: zlib's values, 4-5x faster (bench/results/2026-11-29-hotpath.md)
    from isal.isal_zlib import crc32
except ImportError:  # a platform without isal wheels: zlib's own, correct but slower
    from zlib import crc32

from app.core.errors import GatewayError, bad_request, too_large
from app.domain.blob import SpooledBlob
from app.domain.edit import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_NOT_AN_IMAGE = "not a PNG, JPEG or WEBP image"

# A real encoder writes chunks of 8-64 KB; millions of tiny chunks would only make the Python
# loop below slow, so they are refused as corrupt.
_MAX_PNG_CHUNKS = 100_000
# Allowed PNG bit depths per colour type (PNG spec, table 11.1).
_PNG_DEPTHS: dict[int, frozenset[int]] = {
    0: frozenset({1, 2, 4, 8, 16}),  # greyscale
    2: frozenset({8, 16}),  # truecolour
    3: frozenset({1, 2, 4, 8}),  # indexed
    4: frozenset({8, 16}),  # greyscale + alpha
    6: frozenset({8, 16}),  # truecolour + alpha
}
# JPEG start-of-frame markers: C0-CF except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Other formats clients commonly send by mistake, named in the error to help them.
_OTHER_FORMATS: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"%PDF", "PDF"),
    (b"<svg", "SVG"),
    (b"<?xml", "XML/SVG"),
)


class _Corrupt(Exception):
    """Raised inside a format walker; `probe` turns it into the 400 for that format."""


def probe(data: bytes, *, param: str, max_pixels: int) -> Image:
    """Sniff PNG/JPEG/WEBP from `data`, read its size and alpha, and check its structure.

    Raises `GatewayError`: 413 `payload_too_large` when width x height exceeds `max_pixels`,
    400 `bad_request` for a non-image, an unsupported format, or a truncated/corrupt file.
    """
    mime, width, height, has_alpha = _inspect(data, param, max_pixels)
    return Image(data=data, mime=mime, width=width, height=height, has_alpha=has_alpha)


def map_blob(blob: SpooledBlob) -> mmap.mmap:
    """A read-only mapping of a spooled blob, for `probe_mapped` (it unmaps it)."""
    return mmap.mmap(blob.fd, blob.size, access=mmap.ACCESS_READ)


def probe_mapped(blob: SpooledBlob, mapped: mmap.mmap, *, param: str, max_pixels: int) -> Image:
    """`probe` for a spooled blob, over its mapping, which is closed afterwards: the pages
    stay in the page cache, not in the process, while the request waits upstream. The
    mapping is made by the caller (`map_blob`) so a thread running this never touches the
    blob's descriptor, which the request's spool may close at any time."""
    try:
        mime, width, height, has_alpha = _inspect(mapped, param, max_pixels)
    finally:
        mapped.close()
    return Image(data=blob, mime=mime, width=width, height=height, has_alpha=has_alpha)


def _inspect(data: bytes | mmap.mmap, param: str, max_pixels: int) -> tuple[str, int, int, bool]:
    kind, walker = _sniff(data, param)
    try:
        width, height, has_alpha = walker(data, lambda w, h: _check_pixels(w, h, param, max_pixels))
    except GatewayError:
        raise
    except Exception as exc:  # _Corrupt, struct.error, IndexError...: all mean "bad file"
        raise bad_request(f"{param}: truncated or corrupt {kind}", param) from exc
    return f"image/{kind.lower()}", width, height, has_alpha


# Enough of a file to name its format and, for PNG, to read and check IHDR.
HEAD_BYTES = 33


def check_head(head: bytes, *, param: str, max_pixels: int) -> None:
    """Refuse an upload from its first bytes, before the rest is read: a non-image (the 400
    `probe` gives) and a PNG whose IHDR is over the pixel cap (the 413 `probe` gives).
    Anything else is left to `probe`, which sees the whole file."""
    kind, _ = _sniff(head, param)
    if kind != "PNG" or len(head) < HEAD_BYTES:
        return
    length, ctype = struct.unpack_from(">I4s", head, 8)
    width, height = struct.unpack_from(">II", head, 16)
    if (
        ctype == b"IHDR"
        and length == 13
        and crc32(head[12:29]) == int.from_bytes(head[29:33], "big")
        and 0 < width <= 0x7FFFFFFF
        and 0 < height <= 0x7FFFFFFF
    ):
        _check_pixels(width, height, param, max_pixels)


_Walker = Callable[[bytes | mmap.mmap, Callable[[int, int], None]], tuple[int, int, bool]]


def _sniff(data: bytes | mmap.mmap, param: str) -> tuple[str, _Walker]:
    head = bytes(data[:16])
    if head.startswith(PNG_SIGNATURE):
        return "PNG", _walk_png
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG", _walk_jpeg
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP", _walk_webp
    if not data:
        raise bad_request(f"{param}: empty file, {_NOT_AN_IMAGE}", param)
    hint = next((name for magic, name in _OTHER_FORMATS if head.startswith(magic)), None)
    if hint is None and head[4:8] == b"ftyp":
        hint = "HEIF/AVIF"
    suffix = f" (it looks like {hint})" if hint else ""
    raise bad_request(f"{param}: {_NOT_AN_IMAGE}{suffix}", param)


def _check_pixels(width: int, height: int, param: str, max_pixels: int) -> None:
    """Called by each walker as soon as the header gives the size, before reading further."""
    if width <= 0 or height <= 0:
        raise _Corrupt("zero dimension")
    if width * height > max_pixels:
        raise too_large(
            f"{param}: {width}x{height} is {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} pixels",
            param,
        )


def _walk_png(data: bytes | mmap.mmap, check: Callable[[int, int], None]) -> tuple[int, int, bool]:
    """IHDR first (size checked at once), then every chunk's length and CRC, up to IEND."""
    with memoryview(data) as view:  # released on every exit, so a mapping can be closed
        return _walk_png_view(data, view, check)


def _walk_png_view(
    data: bytes | mmap.mmap, view: memoryview, check: Callable[[int, int], None]
) -> tuple[int, int, bool]:
    n = len(data)
    length, ctype = struct.unpack_from(">I4s", data, 8)
    if ctype != b"IHDR" or length != 13 or n < 33:
        raise _Corrupt("no IHDR")
    width, height, depth, color, compression, filter_, interlace = struct.unpack_from(
        ">IIBBBBB", data, 16
    )
    if crc32(view[12:29]) != int.from_bytes(view[29:33], "big"):
        raise _Corrupt("IHDR CRC")
    if width > 0x7FFFFFFF or height > 0x7FFFFFFF:
        raise _Corrupt("dimension out of range")
    check(width, height)
    if depth not in _PNG_DEPTHS.get(color, ()) or compression or filter_ or interlace > 1:
        raise _Corrupt("bad IHDR fields")

    pos, chunks = 33, 0
    seen_plte = seen_idat = has_trns = False
    while True:
        if pos + 12 > n:
            raise _Corrupt("ends before IEND")
        length, ctype = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if length > 0x7FFFFFFF or end > n:
            raise _Corrupt("chunk runs past the end")
        if crc32(view[pos + 4 : end - 4]) != int.from_bytes(view[end - 4 : end], "big"):
            raise _Corrupt(f"CRC mismatch in {ctype!r}")
        chunks += 1
        if chunks > _MAX_PNG_CHUNKS:
            raise _Corrupt("too many chunks")
        if ctype == b"IEND":
            break
        if ctype == b"IDAT":
            seen_idat = True
        elif ctype == b"PLTE":
            seen_plte = True
        elif ctype == b"tRNS":
            has_trns = True
        elif ctype == b"IHDR":
            raise _Corrupt("second IHDR")
        pos = end
    if not seen_idat or (color == 3 and not seen_plte):
        raise _Corrupt("missing IDAT or PLTE")
    return width, height, color in (4, 6) or has_trns


def _walk_jpeg(data: bytes | mmap.mmap, check: Callable[[int, int], None]) -> tuple[int, int, bool]:
    """Marker segments from SOI to the first SOS (size from SOFn), then an EOI after the scan.

    The entropy-coded data is not walked byte by byte (that would cost tens of ms in Python
    for a large file); a valid scan can never contain FF D9, so finding EOI after the first
    scan header is a cheap and reliable truncation check.
    """
    n = len(data)
    pos = 2
    size: tuple[int, int] | None = None
    while True:
        if pos >= n or data[pos] != 0xFF:
            raise _Corrupt("expected a marker")
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            raise _Corrupt("ends in fill bytes")
        marker = data[pos]
        pos += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM, RSTn: no length
            continue
        if marker in (0x00, 0xD8, 0xD9):
            raise _Corrupt(f"unexpected marker {marker:#x} before the scan")
        if pos + 2 > n:
            raise _Corrupt("segment length missing")
        seg_len = int.from_bytes(data[pos : pos + 2], "big")
        if seg_len < 2 or pos + seg_len > n:
            raise _Corrupt("segment runs past the end")
        if marker in _JPEG_SOF:
            if seg_len < 8 or size is not None:
                raise _Corrupt("bad or repeated SOF")
            height, width = struct.unpack_from(">HH", data, pos + 3)
            check(width, height)
            size = (width, height)
        elif marker == 0xDA:  # SOS: entropy-coded data follows
            if size is None:
                raise _Corrupt("scan before frame header")
            if data.rfind(b"\xff\xd9", pos + seg_len) < 0:
                raise _Corrupt("no EOI after the scan")
            return size[0], size[1], False
        pos += seg_len


def _walk_webp(data: bytes | mmap.mmap, check: Callable[[int, int], None]) -> tuple[int, int, bool]:
    """RIFF length against the file, then the chunk list; size from VP8X, VP8 or VP8L."""
    riff_end = 8 + int.from_bytes(data[4:8], "little")
    if riff_end > len(data) or riff_end < 20:
        raise _Corrupt("RIFF length exceeds the file")
    pos = 12
    size: tuple[int, int] | None = None
    has_alpha = has_image = False
    first = True
    while pos < riff_end:
        if riff_end - pos < 8:
            raise _Corrupt("partial chunk header")
        fourcc = data[pos : pos + 4]
        length = int.from_bytes(data[pos + 4 : pos + 8], "little")
        body = pos + 8
        if body + length > riff_end:
            raise _Corrupt("chunk runs past the RIFF end")
        if fourcc == b"VP8X":
            if not first or length < 10:
                raise _Corrupt("misplaced or short VP8X")
            has_alpha = bool(data[body] & 0x10)
            width = int.from_bytes(data[body + 4 : body + 7], "little") + 1
            height = int.from_bytes(data[body + 7 : body + 10], "little") + 1
            check(width, height)
            size = (width, height)
        elif fourcc == b"VP8 ":
            if length < 10 or data[body] & 1 or data[body + 3 : body + 6] != b"\x9d\x01\x2a":
                raise _Corrupt("bad VP8 key frame header")
            if size is None:
                width = int.from_bytes(data[body + 6 : body + 8], "little") & 0x3FFF
                height = int.from_bytes(data[body + 8 : body + 10], "little") & 0x3FFF
                check(width, height)
                size = (width, height)
            has_image = True
        elif fourcc == b"VP8L":
            if length < 5 or data[body] != 0x2F:
                raise _Corrupt("bad VP8L header")
            bits = int.from_bytes(data[body + 1 : body + 5], "little")
            if bits >> 29:
                raise _Corrupt("unknown VP8L version")
            if size is None:
                width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
                check(width, height)
                size = (width, height)
                has_alpha = bool((bits >> 28) & 1)
            has_image = True
        elif fourcc == b"ALPH":
            has_alpha = True
        elif fourcc == b"ANMF":
            has_image = True
        first = False
        pos = body + length + (length & 1)
    if size is None or not has_image:
        raise _Corrupt("no image data")
    return size[0], size[1], has_alpha
