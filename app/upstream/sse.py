"""Server-sent events from an upstream's byte stream: `(event name, data object)` pairs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

SSEEvent = tuple[str, dict[str, Any]]


class MalformedEvent(ValueError):
    """An event whose data is not a JSON object."""


def _dispatch(event: str | None, data_lines: list[str]) -> SSEEvent | None:
    raw = "\n".join(data_lines)
    if raw.strip() == "[DONE]":
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MalformedEvent("not JSON") from None
    if not isinstance(data, dict):
        raise MalformedEvent("not an object")
    return str(event or data.get("type") or "message"), data


async def sse_events(lines: AsyncIterator[bytes]) -> AsyncIterator[SSEEvent]:
    """Parse `text/event-stream`; stops at `data: [DONE]`. The name is the SSE `event`, else the
    data's `type`, else "message"."""
    event: str | None = None
    data_lines: list[str] = []
    async for raw in lines:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line == "":
            if data_lines:
                parsed = _dispatch(event, data_lines)
                if parsed is None:
                    return
                yield parsed
            event, data_lines = None, []
            continue
        if line.startswith(":"):
            continue  # comment / keep-alive
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            event = value
        elif name == "data":
            data_lines.append(value)
    if data_lines:
        parsed = _dispatch(event, data_lines)
        if parsed is not None:
            yield parsed
