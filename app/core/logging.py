"""Log lines with the trace id; never a key, a header value or image bytes.

Callers pass only safe fields (`log.info("edit.done", extra=fields(...))`). Two renderings of
the same record (docs/OPERATIONS.md, "Logs"):

- `json`: one JSON object per line, for log shippers — the default when stderr is not a
  terminal;
- `text`: `16:07:10.770 INFO  gateway.start  host=127.0.0.1 port=8000` — the default when it is.

`IMAGEGATE_LOG_FORMAT=json|text` overrides the choice.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import Any, Literal, TextIO

import orjson

LogFormat = Literal["json", "text"]
FORMATS: tuple[LogFormat, ...] = ("json", "text")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            "pid": record.process,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def _text_value(value: Any) -> str:
    if isinstance(value, (list, tuple, set)):
        text = ",".join(str(v) for v in value)
    elif isinstance(value, dict):
        text = orjson.dumps(value, default=str).decode()
    else:
        text = str(value)
    if text == "" or any(c in text for c in ' "=\n'):
        return orjson.dumps(text).decode()
    return text


class TextFormatter(logging.Formatter):
    """One readable line per record: time, level, event, then `name=value` fields."""

    def format(self, record: logging.LogRecord) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        parts = [f"{clock}.{int(record.msecs):03d}", f"{record.levelname:<7}", record.getMessage()]
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            parts.append(" ".join(f"{k}={_text_value(v)}" for k, v in fields.items()))
        line = "  ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def resolve_format(requested: str | None, stream: TextIO) -> LogFormat:
    """`IMAGEGATE_LOG_FORMAT` when given; else text for a terminal, JSON otherwise."""
    if requested:
        value = requested.strip().lower()
        if value not in FORMATS:
            raise ValueError(f"IMAGEGATE_LOG_FORMAT must be json or text, got {requested!r}")
        return value
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


# Set inside a server whose routine start-up lines nobody needs (the built-in simulator shares
# uvicorn's loggers with the gateway, so its "Started server process" would repeat the
# gateway's).
_quiet = contextvars.ContextVar("imagegate_quiet_logs", default=False)


class _DropQuiet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not _quiet.get()


@contextlib.contextmanager
def quiet_info() -> Iterator[None]:
    """Below-warning records logged in this context (and tasks it starts) are dropped."""
    token = _quiet.set(True)
    try:
        yield
    finally:
        _quiet.reset(token)


def setup_logging(level: str = "info", log_format: str | None = None) -> LogFormat:
    """Route every record (ours and uvicorn's) to one stderr handler, once per process."""
    stream = sys.stderr
    chosen = resolve_format(
        log_format if log_format is not None else os.environ.get("IMAGEGATE_LOG_FORMAT"), stream
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    handler.addFilter(_DropQuiet())
    # Neither rendering shows the caller's file/line or the thread, so records need not find
    # them: walking the stack for every record (`findCaller`) was most of the cost of the
    # access line written per request (bench/results/2026-11-29-hotpath.md).
    logging._srcfile = None  # a documented switch (the logging HOWTO, Optimization)
    logging.logThreads = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    # uvicorn's access log repeats what our own access line says, without the trace id;
    # httpx logs every upstream call at info, which our access line already covers.
    logging.getLogger("uvicorn.access").disabled = True
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return chosen


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


def fields(**kw: Any) -> dict[str, Any]:
    return {"fields": kw}


def now_ms() -> float:
    return time.perf_counter() * 1000
