"""The fast multipart parser against python-multipart as the oracle: same parts, same bytes,
whatever the chunking, including delimiters split across chunks and CR-heavy data."""

from __future__ import annotations

import random

import pytest
from python_multipart.multipart import MultipartParser

from app.api.multipart import FastMultipartParser, MultipartError, parse_options_header

BOUNDARY = b"----imagegateBoundary7MA4YWxkTrZu0gW"


def body(parts: list[tuple[str, bytes, str | None]], boundary: bytes = BOUNDARY) -> bytes:
    out = b""
    for name, value, filename in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += b"--" + boundary + b"\r\nContent-Disposition: " + disp.encode() + b"\r\n"
        if filename:
            out += b"Content-Type: image/png\r\n"
        out += b"\r\n" + value + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


def collect(parser_cls: type, data: bytes, sizes: list[int]) -> list[tuple[bytes, bytes]]:
    parts: list[tuple[bytes, bytes]] = []
    state: dict[str, object] = {}

    def begin() -> None:
        state.update(headers=b"", data=[], name=b"", value=b"")

    def hfield(d: bytes, s: int, e: int) -> None:  # may arrive in fragments
        state["name"] = state["name"] + bytes(d[s:e])  # type: ignore[operator]

    def hvalue(d: bytes, s: int, e: int) -> None:
        state["value"] = state["value"] + bytes(d[s:e])  # type: ignore[operator]

    def hend() -> None:
        line = state["name"] + b":" + state["value"].strip() + b"|"  # type: ignore[attr-defined,operator]
        state.update(headers=state["headers"] + line, name=b"", value=b"")  # type: ignore[operator]

    def pdata(d: bytes, s: int, e: int) -> None:
        state["data"].append(bytes(d[s:e]))  # type: ignore[attr-defined]

    def pend() -> None:
        parts.append((state["headers"], b"".join(state["data"])))  # type: ignore[arg-type]

    callbacks = {"on_part_begin": begin, "on_header_field": hfield, "on_header_value": hvalue,
                 "on_header_end": hend, "on_part_data": pdata, "on_part_end": pend}  # fmt: skip
    parser = parser_cls(BOUNDARY, callbacks)
    pos = 0
    for size in sizes:
        parser.write(data[pos : pos + size])
        pos += size
    if pos < len(data):
        parser.write(data[pos:])
    return parts


def chunkings(n: int, rng: random.Random) -> list[list[int]]:
    return [[n], [1] * n, [7] * (n // 7 + 1), [rng.randint(1, 97) for _ in range(n)]]


@pytest.mark.parametrize("seed", range(40))
def test_same_parts_as_python_multipart(seed: int) -> None:
    rng = random.Random(seed)
    crlf_heavy = bytes(rng.choice(b"\r\n-ab" + BOUNDARY[:6]) for _ in range(rng.randint(0, 600)))
    noise = rng.randbytes(rng.randint(0, 3000))
    parts = [
        ("model", b"gpt-image-1", None),
        ("prompt", "caf\u00e9 \r\n--".encode(), None),
        ("image[]", crlf_heavy, "a.png"),
        ("image[]", noise, "b.png"),
        ("mask", b"\r" * rng.randint(0, 50), "m.png"),
    ]
    data = body(parts)
    for sizes in chunkings(len(data), rng):
        expected = collect(MultipartParser, data, sizes)
        assert collect(FastMultipartParser, data, sizes) == expected
        assert len(expected) == 5


def test_delimiter_split_at_every_offset() -> None:
    data = body([("image", b"x" * 100 + b"\r\n-" + b"y" * 50, "a.png"), ("model", b"m", None)])
    expected = collect(MultipartParser, data, [len(data)])
    for cut in range(1, len(data)):
        assert collect(FastMultipartParser, data, [cut]) == expected, cut


@pytest.mark.parametrize(
    "bad",
    [
        b"garbage before" + body([("a", b"b", None)]),
        b"--" + BOUNDARY + b"\r\nno-colon-header\r\n\r\nx\r\n--" + BOUNDARY + b"--",
        b"--" + BOUNDARY + b"junk\r\n",
    ],
)
def test_malformed(bad: bytes) -> None:
    parser = FastMultipartParser(BOUNDARY, {})
    with pytest.raises(MultipartError):
        parser.write(bad)
        parser.finalize()


def test_truncated_body_is_not_finished() -> None:
    data = body([("a", b"b", None)])
    ended: list[bool] = []
    parser = FastMultipartParser(BOUNDARY, {"on_end": lambda: ended.append(True)})
    parser.write(data[:-10])
    assert not ended
    with pytest.raises(MultipartError):
        parser.finalize()


def test_options_header() -> None:
    assert parse_options_header(b'form-data; name="image[]"; filename="a \\"b\\".png"') == (
        b"form-data",
        {b"name": b"image[]", b"filename": b'a "b".png'},
    )
    assert parse_options_header("multipart/form-data; boundary=abc") == (
        b"multipart/form-data",
        {b"boundary": b"abc"},
    )
