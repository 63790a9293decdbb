"""The fast multipart parser against python-multipart as the oracle: same parts, same bytes,
whatever the chunking, including delimiters split across chunks and CR-heavy data."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from python_multipart.multipart import MultipartParser

from app.api.body import _parse_content_type
from app.api.multipart import (
    FastMultipartParser,
    MultipartError,
    _disposition,
    form_data_options,
    parse_options_header,
)

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
    _feed(parser, data, sizes)
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


# ------------------------------------------------ the form-data mode (`on_part`) and fast paths


def _feed(parser: Any, data: bytes, sizes: list[int]) -> None:
    """`data` to `parser` in chunks of `sizes`, then the rest in one."""
    pos = 0
    for size in sizes:
        parser.write(data[pos : pos + size])
        pos += size
    if pos < len(data):
        parser.write(data[pos:])


def collect_lean(data: bytes, sizes: list[int]) -> list[tuple[bytes | None, bytes]]:
    """(Content-Disposition, data) per part, through `on_part` instead of header callbacks."""
    parts: list[tuple[bytes | None, bytes]] = []
    state: dict[str, Any] = {}

    def on_part(disposition: bytes | None) -> None:
        state.update(disposition=disposition, data=[])

    def pdata(d: bytes, s: int, e: int) -> None:
        state["data"].append(bytes(d[s:e]))

    def pend() -> None:
        parts.append((state["disposition"], b"".join(state["data"])))

    parser = FastMultipartParser(
        BOUNDARY, {"on_part": on_part, "on_part_data": pdata, "on_part_end": pend}
    )
    _feed(parser, data, sizes)
    return parts


def disposition_of(headers: bytes) -> bytes | None:
    """The last Content-Disposition in `collect`'s `name:value|` header string."""
    found = None
    for item in headers.split(b"|")[:-1]:
        name, _, value = item.partition(b":")
        if name.strip().lower() == b"content-disposition":
            found = value
    return found


@pytest.mark.parametrize("seed", range(20))
def test_on_part_mode_gives_the_oracles_parts(seed: int) -> None:
    rng = random.Random(seed)
    parts = [
        ("model", b"gpt-image-1", None),
        ("image[]", bytes(rng.choice(b"\r\n-x" + BOUNDARY[:6]) for _ in range(400)), "a.png"),
        ("mask", rng.randbytes(rng.randint(0, 2000)), "m.png"),
    ]
    data = body(parts)
    for sizes in chunkings(len(data), rng):
        expected = collect(MultipartParser, data, sizes)
        lean = collect_lean(data, sizes)
        assert [(d.strip() if d else d, v) for d, v in lean] == [
            (disposition_of(h), v) for h, v in expected
        ]


def old_disposition(block: bytes) -> bytes | None:
    """What the header callbacks give a collector (last Content-Disposition wins)."""
    out: dict[str, Any] = {"name": bytearray(), "value": bytearray(), "disposition": None}

    def hfield(d: bytes, s: int, e: int) -> None:
        out["name"] += d[s:e]

    def hvalue(d: bytes, s: int, e: int) -> None:
        out["value"] += d[s:e]

    def hend() -> None:
        if out["name"].strip().lower() == b"content-disposition":
            out["disposition"] = bytes(out["value"])
        out["name"], out["value"] = bytearray(), bytearray()

    parser = FastMultipartParser(
        BOUNDARY, {"on_header_field": hfield, "on_header_value": hvalue, "on_header_end": hend}
    )
    parser.write(b"--" + BOUNDARY + b"\r\n" + block + b"\r\n\r\nx\r\n--" + BOUNDARY + b"--")
    return out["disposition"]  # type: ignore[no-any-return]


_header_piece = st.sampled_from(
    [b"Content-Disposition", b"content-disposition", b" CONTENT-Disposition\t", b"Content-Type",
     b":", b": ", b":\t ", b"form-data", b'; name="a"', b"\r\n", b"\n", b" ", b"x", b""]
)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(st.lists(_header_piece, max_size=10).map(b"".join) | st.binary(max_size=60))
def test_disposition_is_what_the_header_callbacks_give(block: bytes) -> None:
    if b"\r\n\r\n" in block or block.endswith(b"\r\n") or block.startswith(b"\r\n"):
        return  # not one header block
    try:
        expected: Any = old_disposition(block)
    except MultipartError:
        expected = MultipartError
    try:
        got: Any = _disposition(block)
    except MultipartError:
        got = MultipartError
    assert got == expected


_disposition_piece = st.sampled_from(
    [b'form-data; name="', b"form-data; name=", b'Form-Data; name="', b'form-data;name="',
     b'"', b"\\", b";", b" ", b"=", b"image", b"a.png", b'; filename="', b"; filename=",
     b'"; filename="', b"\xc3\xa9", b"\t", b"\n", b""]
)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(st.lists(_disposition_piece, max_size=8).map(b"".join) | st.binary(max_size=40))
def test_form_data_options_is_parse_options_header(value: bytes) -> None:
    assert form_data_options(value) == parse_options_header(value)[1]


def test_form_data_options_common_shapes() -> None:
    assert form_data_options(b'form-data; name="prompt"') == {b"name": b"prompt"}
    assert form_data_options(b'form-data; name="image[]"; filename="a b;c.png"') == {
        b"name": b"image[]",
        b"filename": b"a b;c.png",
    }
    assert form_data_options(b'form-data; name="a"; filename="') == {
        b"name": b"a",
        b"filename": b'"',
    }


def general_content_type(value: str) -> tuple[str, dict[bytes, bytes]]:
    mime, options = parse_options_header(value)
    return mime.decode("latin-1").strip(), options


@settings(max_examples=500, deadline=None)
@given(
    st.tuples(
        st.sampled_from(["multipart/form-data; boundary=", "multipart/form-data;boundary=", ""]),
        st.text(alphabet='ab-_=;" \t\\\x1c\xa0\u00e9', max_size=12),
    ).map("".join)
)
def test_content_type_fast_path_is_the_general_parse(value: str) -> None:
    assert _parse_content_type(value) == general_content_type(value)
