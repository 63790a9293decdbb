"""Mutable simulator state: queued faults, global latency, recorded requests, served files.

One :class:`SimulatorState` may be shared by an app running in a uvicorn thread and the test
that drives it, so every mutation takes a lock; readers get copies.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Mapping
from typing import Any

from app.simulator.faults import Fault, parse_fault

SECRET_HEADERS = ("authorization", "x-goog-api-key", "api-key")


def mask_secret(value: str) -> str:
    """`sk-sim-abcd1234` → `sk-…1234`: enough to tell keys apart, never the key."""
    if len(value) <= 8:
        return "…" + value[-2:] if value else ""
    return f"{value[:3]}…{value[-4:]}"


def mask_header(name: str, value: str) -> str:
    if name == "authorization":
        scheme, _, token = value.partition(" ")
        return f"{scheme} {mask_secret(token)}" if token else mask_secret(value)
    return mask_secret(value)


def summarize_b64(data: str, mime: str | None) -> dict[str, Any]:
    """What the recording keeps of a base64 payload: decoded size, sha256, declared mime."""
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        return {"size": None, "sha256": None, "mime": mime, "invalid_base64": True}
    return {"size": len(raw), "sha256": hashlib.sha256(raw).hexdigest(), "mime": mime}


def summarize_json(value: Any) -> Any:
    """Copy of a JSON body with every base64 payload replaced by :func:`summarize_b64`.

    Covers Gemini `inlineData`/`inline_data` `{mimeType, data}` and `data:` URLs anywhere
    (OpenAI `images[].image_url`).
    """
    if isinstance(value, dict):
        mime = value.get("mimeType", value.get("mime_type"))
        out: dict[str, Any] = {}
        for key, item in value.items():
            if (
                key == "data"
                and isinstance(item, str)
                and ("mimeType" in value or "mime_type" in value)
            ):
                out[key] = summarize_b64(item, mime if isinstance(mime, str) else None)
            else:
                out[key] = summarize_json(item)
        return out
    if isinstance(value, list):
        return [summarize_json(item) for item in value]
    if isinstance(value, str) and value.startswith("data:") and ";base64," in value[:200]:
        head, _, payload = value.partition(",")
        return summarize_b64(payload, head[5:].split(";", 1)[0] or None)
    return value


class FileStore:
    """Bounded in-memory store for dall-e-2 `url` results (OpenAI keeps them ~60 minutes)."""

    def __init__(self, max_files: int = 256, ttl_s: float = 3600.0) -> None:
        self._files: OrderedDict[str, tuple[bytes, str, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.max_files = max_files
        self.ttl_s = ttl_s

    def put(self, data: bytes, mime: str, ext: str) -> str:
        name = f"img-{uuid.uuid4().hex}.{ext}"
        with self._lock:
            self._files[name] = (data, mime, time.monotonic())
            while len(self._files) > self.max_files:
                self._files.popitem(last=False)
        return name

    def get(self, name: str) -> tuple[bytes, str] | None:
        with self._lock:
            item = self._files.get(name)
            if item is None:
                return None
            if time.monotonic() - item[2] > self.ttl_s:
                del self._files[name]
                return None
            return item[0], item[1]

    def clear(self) -> None:
        with self._lock:
            self._files.clear()


class SimulatorState:
    """Everything the control API (`/_sim/...`) and tests can see or change.

    - ``latency_s``: added before every successful answer (slow-upstream benchmarks).
    - faults: :meth:`add_fault`, :meth:`clear_faults`, :attr:`faults`.
    - recorded requests: :attr:`requests` (newest last), :meth:`clear_requests`.
    - ``dalle2_require_alpha``: dall-e-2 refuses an image without alpha when no mask is sent,
      as the real API does ("format must be in ['RGBA', 'LA', 'L'], got RGB").
    - ``token_lifetime_s``: how long an OAuth2 token from `POST /token` is valid (Vertex).
    """

    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        max_recorded: int = 1000,
        dalle2_require_alpha: bool = True,
    ) -> None:
        self.latency_s = latency_s
        self.dalle2_require_alpha = dalle2_require_alpha
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._requests: deque[dict[str, Any]] = deque(maxlen=max_recorded)
        self._seq = 0
        self.files = FileStore()
        self.token_lifetime_s = 3600
        self.tokens: dict[str, float] = {}  # access token -> expiry (epoch seconds)

    # -- faults ----------------------------------------------------------------------------
    def add_fault(self, fault: Fault | Mapping[str, Any] | None = None, **spec: Any) -> Fault:
        """Queue a fault: a :class:`Fault`, a JSON-like mapping, or keyword arguments."""
        if fault is None:
            fault = parse_fault(spec)
        elif not isinstance(fault, Fault):
            fault = parse_fault({**fault, **spec})
        with self._lock:
            self._faults.append(fault)
        return fault

    def take_fault(self, protocol: str, model: str | None) -> Fault | None:
        """The oldest fault matching this request, using up one of its ``times``."""
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.matches(protocol, model):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            del self._faults[index]
                    return copy.copy(fault)
        return None

    @property
    def faults(self) -> list[Fault]:
        with self._lock:
            return [copy.copy(f) for f in self._faults]

    def clear_faults(self) -> int:
        with self._lock:
            count = len(self._faults)
            self._faults.clear()
        return count

    # -- recording -------------------------------------------------------------------------
    def begin_request(
        self,
        *,
        protocol: str,
        path: str,
        method: str,
        headers: list[tuple[str, str]],
        query: Mapping[str, str],
        content_type: str | None,
    ) -> dict[str, Any]:
        """Start a record now (so an in-flight request is visible); handlers fill it in."""
        masked: dict[str, str] = {}
        for name, value in headers:
            shown = mask_header(name, value) if name in SECRET_HEADERS else value
            masked[name] = f"{masked[name]}, {shown}" if name in masked else shown
        safe_query = {k: (mask_secret(v) if k == "key" else v) for k, v in query.items()}
        with self._lock:
            self._seq += 1
            record: dict[str, Any] = {
                "id": self._seq,
                "time": time.time(),
                "protocol": protocol,
                "model": None,
                "path": path,
                "method": method,
                "query": safe_query,
                "headers": masked,
                "content_type": content_type,
                "fields": {},
                "files": [],
                "json": None,
                "fault": None,
                "status": None,
            }
            self._requests.append(record)
        return record

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Recorded requests, oldest first (deep copies)."""
        with self._lock:
            return copy.deepcopy(list(self._requests))

    def clear_requests(self) -> int:
        with self._lock:
            count = len(self._requests)
            self._requests.clear()
        return count

    def reset(self) -> None:
        """Forget faults, recordings and files; latency back to zero."""
        self.clear_faults()
        self.clear_requests()
        self.files.clear()
        self.latency_s = 0.0
        self.token_lifetime_s = 3600
        self.tokens.clear()
