"""`decode_data_url`: base64 image data URLs only, size checked before decoding."""

from __future__ import annotations

import base64

import pytest

from app.core.errors import GatewayError
from app.media.fetch import decode_data_url
from tests.media import encode

PNG = encode("RGB", "PNG")


def test_data_url_round_trip() -> None:
    b64 = base64.b64encode(PNG).decode()
    assert decode_data_url(f"data:image/png;base64,{b64}", param="image", max_bytes=10**6) == PNG
    wrapped = "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76))
    assert (
        decode_data_url(f"data:image/png;base64,{wrapped}", param="image", max_bytes=10**6) == PNG
    )
    unpadded = b64.rstrip("=")
    assert decode_data_url(f"DATA:image/webp;base64,{unpadded}", param="i", max_bytes=10**6) == PNG


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("data:text/plain;base64,aGVsbG8=", "data:image/<type>;base64"),
        ("data:image/png,rawbytes", "data:image/<type>;base64"),
        ("data:image/png;base64", "data:image/<type>;base64"),
        ("data:image/png;base64,!!!notbase64!!!", "not valid base64"),
        ("data:image/png;base64,aGVsbG8=aGVsbG8=", "not valid base64"),
    ],
)
def test_bad_data_urls(url: str, fragment: str) -> None:
    with pytest.raises(GatewayError) as info:
        decode_data_url(url, param="image[0]", max_bytes=1000)
    assert info.value.status == 400 and info.value.param == "image[0]"
    assert fragment in info.value.message


def test_data_url_size_checked_before_decoding() -> None:
    url = "data:image/png;base64," + "A" * 4000  # 3000 bytes once decoded
    with pytest.raises(GatewayError) as info:
        decode_data_url(url, param="image", max_bytes=2999)
    assert info.value.status == 413
    assert len(decode_data_url(url, param="image", max_bytes=3000)) == 3000
