"""A streaming multipart/form-data parser that finds boundaries with `bytes.find`.

The edit endpoint's body is a few text fields and a few large files. A general per-byte state
machine (python-multipart) spends ~0.2 ms of Python per request on a 100 KB edit; here the
search for the next delimiter is one C-level `find` per chunk, headers are parsed per line,
and part data is handed on as (buffer, start, end) slices of the incoming chunks, so a file is
never copied until its consumer joins it once.

It drives the same callbacks as python-multipart's `MultipartParser` (`on_part_begin`,
`on_header_field`, `on_header_value`, `on_header_end`, `on_headers_finished`, `on_part_data`,
`on_part_end`, `on_end`), so it can be checked against python-multipart as an oracle. A
form-data consumer that needs only each part's Content-Disposition passes `on_part` instead of
the header callbacks: one call per part with that header's value, the header lines checked
the same way, instead of three calls per header line and two more (the edit collector in
`app/api/body.py` does; bench/results/2026-11-29-multipart.md).
Malformed input raises `MultipartError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

MAX_HEADER_BYTES: Final = 16 * 1024  # one part's header block
MAX_BOUNDARY: Final = 200  # RFC 2046 allows 70; be lenient, never unbounded

_PREAMBLE, _AFTER_DELIM, _HEADERS, _BODY, _END = range(5)

# `; name="value"` or `; name=token` pairs of a header value (RFC 7578 / 6266 style).
_PARAM = re.compile(rb';\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_UNESCAPE = re.compile(rb"\\(.)")


class MultipartError(ValueError):
    """The body is not well-formed multipart/form-data."""


def parse_options_header(value: bytes | str) -> tuple[bytes, dict[bytes, bytes]]:
    """`form-data; name="image"; filename="a.png"` -> (b"form-data", {b"name": ..., ...})."""
    raw = value.encode("latin-1") if isinstance(value, str) else value
    head, sep, _ = raw.partition(b";")
    options: dict[bytes, bytes] = {}
    if sep:
        for m in _PARAM.finditer(raw, len(head)):
            key, val = m.group(1).lower(), m.group(2).strip()
            if val[:1] == b'"' and val[-1:] == b'"' and len(val) >= 2:
                val = _UNESCAPE.sub(rb"\1", val[1:-1])
            options[key] = val
    return head.strip().lower(), options


# The shape every HTTP client sends: `form-data; name="x"` and, for a file, `; filename="y"`.
_FORM_DATA: Final = b'form-data; name="'
_FILENAME: Final = b'; filename="'


def form_data_options(value: bytes) -> dict[bytes, bytes]:
    """The parameters of a part's Content-Disposition, as `parse_options_header(value)[1]`.

    The common shape is split with two `find`s instead of the regex; a value of any other
    shape (other spacing or case, escapes, more parameters) goes to `parse_options_header`.
    A quoted value without `"` or a backslash inside is exactly what the regex would give.
    """
    if value.startswith(_FORM_DATA):
        close = value.find(b'"', 17)
        if close > 0:
            name = value[17:close]
            if b"\\" not in name:
                rest = value[close + 1 :]
                if not rest:
                    return {b"name": name}
                # `"` at the end that is not the opening quote: `; filename="` alone is not this
                if len(rest) > 12 and rest.startswith(_FILENAME) and rest[-1] == 34:
                    filename = rest[12:-1]
                    if b'"' not in filename and b"\\" not in filename:
                        return {b"name": name, b"filename": filename}
    return parse_options_header(value)[1]


def _header_lines(block: bytes) -> Iterator[tuple[bytes, int]]:
    """A part's header lines with the position of their colon. The one rule for a header
    block, in both parser modes: every non-empty line is `name: value` (a colon after a
    non-empty name)."""
    for line in block.split(b"\r\n"):
        if not line:
            continue
        colon = line.find(b":")
        if colon <= 0:
            raise MultipartError("malformed multipart part header")
        yield line, colon


def _disposition(block: bytes) -> bytes | None:
    """A part's Content-Disposition value from its header block (the last one if repeated);
    the value is what the python-multipart callbacks would pass, without leading blanks."""
    found: bytes | None = None
    for line, colon in _header_lines(block):
        # The exact spelling first; else any case and surrounding whitespace, as before.
        if (colon == 19 and line.startswith(b"Content-Disposition")) or (
            colon >= 19 and line[:colon].strip().lower() == b"content-disposition"
        ):
            found = line[colon + 1 :].lstrip(b" \t")
    return found


Callbacks = Mapping[str, Callable[..., Any]]


def _noop(*_: Any) -> None:
    return None


class FastMultipartParser:
    """Feed chunks with `write`; callbacks fire as parts are recognized."""

    def __init__(self, boundary: bytes, callbacks: Callbacks) -> None:
        if not boundary or len(boundary) > MAX_BOUNDARY:
            raise MultipartError("bad multipart boundary")
        self._dash_boundary = b"--" + boundary
        self._delim = b"\r\n--" + boundary  # what ends a part's data
        self._keep = len(self._delim) - 1  # bytes that may be a delimiter's start
        self._state = _PREAMBLE
        self._buf = b""  # unconsumed bytes carried from earlier chunks (always small)
        self._skipped = 0  # preamble bytes dropped before the first boundary was found
        cb = callbacks.get
        # `on_part(disposition)` replaces on_part_begin, the header callbacks and
        # on_headers_finished: it fires once the part's headers are complete.
        self._on_part: Callable[[bytes | None], Any] | None = cb("on_part")
        self._on_part_begin = cb("on_part_begin") or _noop
        self._on_header_field = cb("on_header_field") or _noop
        self._on_header_value = cb("on_header_value") or _noop
        self._on_header_end = cb("on_header_end") or _noop
        self._on_headers_finished = cb("on_headers_finished") or _noop
        self._on_part_data = cb("on_part_data") or _noop
        self._on_part_end = cb("on_part_end") or _noop
        self._on_end = cb("on_end") or _noop

    def write(self, chunk: bytes) -> int:
        # The state lives in a local while the chunk is scanned and is stored when the scan
        # stops: a callback that raises ends the parse, so nothing reads it after that.
        state = self._state
        delim = self._delim
        on_part_data = self._on_part_data
        pos = 0
        if state == _BODY and self._buf and len(chunk) >= len(delim):
            # A delimiter may straddle the previous chunk's tail and this chunk: check that
            # small window, then scan the chunk itself (so its slices stay zero-copy).
            tail, self._buf = self._buf, b""
            window = tail + chunk[: len(delim)]
            i = window.find(delim)
            if 0 <= i < len(tail):
                if i:
                    on_part_data(tail, 0, i)
                self._on_part_end()
                state = _AFTER_DELIM
                pos = i + len(delim) - len(tail)
            else:
                on_part_data(tail, 0, len(tail))
            data = chunk
        else:
            data = self._buf + chunk if self._buf else chunk
            self._buf = b""
        n = len(data)
        while pos < n or state == _END:
            if state == _BODY:
                found = data.find(delim, pos)
                if found < 0:
                    # Only the last `_keep` bytes can begin a delimiter; and only from a CR on:
                    # emit what is surely data, keep the rest for the next chunk.
                    cr = data.find(b"\r", max(pos, n - self._keep))
                    cut = cr if cr >= 0 else n
                    if cut > pos:
                        on_part_data(data, pos, cut)
                    self._buf = data[cut:]
                    break
                if found > pos:
                    on_part_data(data, pos, found)
                self._on_part_end()
                state = _AFTER_DELIM
                pos = found + len(delim)
            elif state == _HEADERS:
                end = data.find(b"\r\n\r\n", pos)
                if end < 0:
                    if n - pos > MAX_HEADER_BYTES:
                        raise MultipartError("multipart part headers are too large")
                    self._buf = data[pos:]
                    break
                if self._on_part is not None:
                    self._on_part(_disposition(data[pos:end]))
                else:
                    self._headers(data[pos:end])
                pos = end + 4
                state = _BODY
            elif state == _AFTER_DELIM:
                if n - pos < 2:
                    self._buf = data[pos:]
                    break
                if data.startswith(b"--", pos):
                    self._state = _END
                    self._on_end()
                    return len(chunk)
                if not data.startswith(b"\r\n", pos):
                    # transport padding (spaces/tabs) before the CRLF is allowed
                    eol = data.find(b"\r\n", pos)
                    if eol < 0 or data[pos:eol].strip(b" \t"):
                        if eol < 0 and n - pos < 256:
                            self._buf = data[pos:]
                            break
                        raise MultipartError("malformed multipart boundary line")
                    pos = eol
                pos += 2
                state = _HEADERS
                if self._on_part is None:
                    self._on_part_begin()
            elif state == _PREAMBLE:
                found = data.find(self._dash_boundary, pos)
                if found < 0:
                    # Keep what could be the start of the first boundary and the CRLF before it,
                    # so the check below sees the same bytes however the body was chunked.
                    keep = max(pos, n - len(self._dash_boundary) - 2)
                    self._skipped += keep
                    self._buf = data[keep:]
                    break
                if (found or self._skipped) and data[found - 2 : found] != b"\r\n":
                    raise MultipartError("malformed multipart body before the first boundary")
                pos = found + len(self._dash_boundary)
                state = _AFTER_DELIM
            else:  # _END: ignore the epilogue
                return len(chunk)
        self._state = state
        return len(chunk)

    def _headers(self, block: bytes) -> None:
        for line, colon in _header_lines(block):
            self._on_header_field(line, 0, colon)
            start = colon + 1
            while start < len(line) and line[start] in (32, 9):
                start += 1
            self._on_header_value(line, start, len(line))
            self._on_header_end()
        self._on_headers_finished()

    def finalize(self) -> None:
        if self._state != _END:
            raise MultipartError("multipart body ends before the closing boundary")
