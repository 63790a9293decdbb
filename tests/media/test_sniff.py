"""`probe`: format by magic bytes, size and alpha from the header, structure without decoding."""

from __future__ import annotations

import io
import random
import struct

import pytest
from PIL import Image as PILImage

from app.core.errors import GatewayError
from app.media.sniff import probe
from tests.media import encode, png_chunk, png_header_only

BIG = 100_000_000


def _probe(data: bytes, param: str = "image[1]", max_pixels: int = BIG):
    return probe(data, param=param, max_pixels=max_pixels)


@pytest.mark.parametrize(
    ("mode", "fmt", "save", "mime", "alpha"),
    [
        ("RGB", "PNG", {}, "image/png", False),
        ("RGBA", "PNG", {}, "image/png", True),
        ("L", "PNG", {}, "image/png", False),
        ("LA", "PNG", {}, "image/png", True),
        ("I;16", "PNG", {}, "image/png", False),
        ("1", "PNG", {}, "image/png", False),
        ("P", "PNG", {}, "image/png", False),
        ("P", "PNG", {"transparency": 0}, "image/png", True),
        ("RGB", "PNG", {"transparency": (0, 0, 0)}, "image/png", True),
        ("RGB", "JPEG", {}, "image/jpeg", False),
        ("RGB", "JPEG", {"progressive": True}, "image/jpeg", False),
        ("L", "JPEG", {}, "image/jpeg", False),
        ("CMYK", "JPEG", {}, "image/jpeg", False),
        ("RGB", "WEBP", {}, "image/webp", False),
        ("RGBA", "WEBP", {}, "image/webp", True),
        ("RGB", "WEBP", {"lossless": True}, "image/webp", False),
        ("RGBA", "WEBP", {"lossless": True}, "image/webp", True),
    ],
)
def test_real_images(mode: str, fmt: str, save: dict, mime: str, alpha: bool) -> None:
    data = encode(mode, fmt, **save)
    img = _probe(data)
    assert (img.mime, img.width, img.height, img.has_alpha) == (mime, 37, 21, alpha)
    assert img.data is data
    with PILImage.open(io.BytesIO(data)) as pil:  # agrees with Pillow's own reading
        assert pil.size == (img.width, img.height)


def test_large_dimensions_read_from_header() -> None:
    img = _probe(encode("RGB", "WEBP", size=(3000, 17)))
    assert (img.width, img.height) == (3000, 17)


def test_animated_webp() -> None:
    frames = [PILImage.new("RGBA", (20, 10), (i * 40, 0, 0, 128)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:])
    img = _probe(buf.getvalue())
    assert (img.mime, img.width, img.height, img.has_alpha) == ("image/webp", 20, 10, True)


# ---------------------------------------------------------------- refusals


def _refused(data: bytes, *, code: str = "bad_request", **kw: object) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        _probe(data, **kw)  # type: ignore[arg-type]
    assert info.value.code == code
    assert info.value.param == kw.get("param", "image[1]")
    return info.value


@pytest.mark.parametrize(("fmt", "kind"), [("PNG", "PNG"), ("JPEG", "JPEG"), ("WEBP", "WEBP")])
def test_truncated(fmt: str, kind: str) -> None:
    data = encode("RGB", fmt, size=(300, 200))
    for cut in (len(data) - 1, len(data) - 2, len(data) // 2, 40, 20):
        err = _refused(data[:cut])
        assert err.message == f"image[1]: truncated or corrupt {kind}", cut
        assert err.status == 400


def test_png_crc_mismatch_is_corrupt() -> None:
    data = bytearray(encode("RGB", "PNG", size=(64, 64)))
    data[60] ^= 0xFF  # inside the first IDAT
    assert "corrupt PNG" in _refused(bytes(data)).message


def test_png_missing_idat_or_plte() -> None:
    ihdr = struct.pack(">IIBBBBB", 4, 4, 8, 3, 0, 0, 0)  # indexed colour, no PLTE
    no_plte = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", b"x")
        + png_chunk(b"IEND", b"")
    )
    assert "corrupt PNG" in _refused(no_plte).message
    no_idat = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")
    assert "corrupt PNG" in _refused(no_idat).message


def test_jpeg_without_eoi_is_truncated() -> None:
    data = encode("RGB", "JPEG", size=(64, 64))
    assert data.endswith(b"\xff\xd9")
    assert "corrupt JPEG" in _refused(data[:-2]).message


def test_webp_riff_length_beyond_file() -> None:
    data = bytearray(encode("RGB", "WEBP"))
    data[4:8] = (len(data) + 100).to_bytes(4, "little")
    assert "corrupt WEBP" in _refused(bytes(data)).message


def test_text_file_named_png_is_not_an_image() -> None:
    err = _refused(b"hello, I am definitely a PNG\n", param="image")
    assert err.message == "image: not a PNG, JPEG or WEBP image"


def test_zero_bytes() -> None:
    err = _refused(b"", param="image")
    assert err.message.startswith("image: empty file")


def test_other_formats_are_named() -> None:
    gif = encode("P", "GIF")
    assert "looks like GIF" in _refused(gif).message
    assert "looks like BMP" in _refused(encode("RGB", "BMP")).message


def test_png_bomb_header_refused_before_decoding() -> None:
    bomb = png_header_only(30000, 30000)
    err = _refused(bomb, code="payload_too_large", max_pixels=50_000_000)
    assert err.status == 413
    assert "30000x30000" in err.message
    assert "50,000,000" in err.message


def test_bomb_refused_before_structure_walk() -> None:
    # IHDR claims 30000x30000 and the rest is garbage: the size decides first, nothing else
    # is read, so a bomb is 413 whatever follows its header.
    bomb = png_header_only(30000, 30000)[:33] + b"\x00" * 1000
    _refused(bomb, code="payload_too_large", max_pixels=50_000_000)


def test_jpeg_and_webp_bombs() -> None:
    jpeg = bytearray(encode("RGB", "JPEG", size=(16, 16)))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 30000, 30000)
    err = _refused(bytes(jpeg), code="payload_too_large", max_pixels=50_000_000)
    assert "30000x30000" in err.message
    webp = encode("RGB", "WEBP", size=(200, 100))
    err = _refused(webp, code="payload_too_large", max_pixels=19_999)
    assert "200x100" in err.message


def test_pixel_limit_is_inclusive() -> None:
    assert _probe(encode("RGB", "PNG", size=(10, 10)), max_pixels=100).width == 10


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_mutations_never_escape_as_anything_but_gateway_errors(fmt: str) -> None:
    """Random damage to real files: the result is an Image or a 400/413, never a crash."""
    base = encode("RGBA" if fmt != "JPEG" else "RGB", fmt, size=(40, 30))
    rng = random.Random(fmt)
    for _ in range(400):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(data))
            data[pos] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        try:
            _probe(bytes(data))
        except GatewayError as err:
            assert err.status in (400, 413)
