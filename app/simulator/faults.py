"""Fault descriptions: what the simulator should do wrong, for which requests, how often.

A fault is queued (control API or :meth:`SimulatorState.add_fault`) and consumed by the next
requests that match its protocol and model; each match uses one of its ``times``. Prompt
directives such as ``[sim:fail=500]`` build a one-off fault for manual testing with curl.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

FaultKind = Literal[
    "status", "timeout", "latency", "safety", "text_only", "short", "disconnect", "no_usage"
]
FAULT_KINDS: tuple[str, ...] = (
    "status",
    "timeout",
    "latency",
    "safety",
    "text_only",
    "short",
    "disconnect",
    "no_usage",  # a success without the usage report (as some OpenAI-compatible proxies do)
)
PROTOCOLS: tuple[str, ...] = ("openai", "gemini", "any")

#: Seconds a `timeout` fault sleeps when `delay_s` is not given: longer than any sane client
#: timeout in tests, short enough not to pin a task forever.
DEFAULT_TIMEOUT_DELAY_S = 60.0

_ids = itertools.count(1)


@dataclass
class Fault:
    """One queued misbehaviour. Only the fields relevant to ``kind`` are used."""

    kind: str
    protocol: str = "any"
    model: str | None = None
    #: how many matching requests it affects; ``None`` = until cleared
    times: int | None = 1
    #: `status`: HTTP status to answer with (default 500)
    status: int | None = None
    #: `status`: full replacement body (JSON value or text); else built from code/message
    body: Any = None
    code: str | None = None
    message: str | None = None
    #: `status`: extra response headers
    headers: dict[str, str] = field(default_factory=dict)
    #: `status` 429/503: adds `Retry-After` (seconds)
    retry_after: float | None = None
    #: `timeout`, `latency`: seconds to wait
    delay_s: float | None = None
    #: `safety`: "prompt" (input stage / promptFeedback) or "output" (default)
    where: str = "output"
    #: `short`: how many images fewer than asked
    count: int = 1
    #: `safety` (Gemini): overrides `finishReason` / `promptFeedback.blockReason`
    finish_reason: str | None = None
    block_reason: str | None = None
    id: int = field(default_factory=lambda: next(_ids))

    def matches(self, protocol: str, model: str | None) -> bool:
        if self.protocol not in ("any", protocol):
            return False
        return self.model is None or self.model == model

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FaultSpecError(ValueError):
    """A fault description that cannot be queued (bad kind, wrong types)."""


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "protocol": (str,),
    "model": (str,),
    "times": (int,),
    "status": (int,),
    "code": (str,),
    "message": (str,),
    "headers": (dict,),
    "retry_after": (int, float),
    "delay_s": (int, float),
    "where": (str,),
    "count": (int,),
    "finish_reason": (str,),
    "block_reason": (str,),
}


def parse_fault(spec: Mapping[str, Any]) -> Fault:
    """Validate a JSON fault description into a :class:`Fault` (raises :class:`FaultSpecError`)."""
    if not isinstance(spec, Mapping):
        raise FaultSpecError("a fault must be a JSON object")
    kind = spec.get("kind")
    if kind not in FAULT_KINDS:
        raise FaultSpecError(f"kind must be one of {', '.join(FAULT_KINDS)}; got {kind!r}")
    kwargs: dict[str, Any] = {"kind": kind}
    for name, value in spec.items():
        if name == "kind":
            continue
        if name == "body":
            kwargs["body"] = value
            continue
        if name not in _FIELD_TYPES:
            raise FaultSpecError(f"unknown fault field {name!r}")
        if value is None:
            if name in ("times", "model"):
                kwargs[name] = None
            continue
        types = _FIELD_TYPES[name]
        if isinstance(value, bool) or not isinstance(value, types):
            raise FaultSpecError(f"fault field {name!r} has the wrong type")
        kwargs[name] = value
    fault = Fault(**kwargs)
    if fault.protocol not in PROTOCOLS:
        raise FaultSpecError(f"protocol must be one of {', '.join(PROTOCOLS)}")
    if fault.times is not None and fault.times < 1:
        raise FaultSpecError("times must be >= 1 (or null for 'until cleared')")
    if fault.status is not None and not 100 <= fault.status <= 599:
        raise FaultSpecError("status must be an HTTP status code")
    if fault.delay_s is not None and fault.delay_s < 0:
        raise FaultSpecError("delay_s must be >= 0")
    if fault.where not in ("prompt", "output"):
        raise FaultSpecError("where must be 'prompt' or 'output'")
    if fault.count < 0:
        raise FaultSpecError("count must be >= 0")
    fault.headers = {str(k): str(v) for k, v in fault.headers.items()}
    return fault


_DIRECTIVE = re.compile(r"\[sim:([a-z_]+)(?:=([^\]]*))?\]")


def prompt_directive(prompt: str | None) -> Fault | None:
    """A one-off fault from a prompt such as ``"a cat [sim:fail=500]"`` (manual testing).

    Directives: ``fail=<status>``, ``timeout=<s>``, ``delay=<s>``, ``safety`` or
    ``safety=prompt``, ``text_only``, ``short=<count>``, ``disconnect``.
    """
    if not prompt or "[sim:" not in prompt:
        return None
    match = _DIRECTIVE.search(prompt)
    if match is None:
        return None
    name, arg = match.group(1), (match.group(2) or "").strip()
    try:
        if name == "fail":
            return Fault(kind="status", status=int(arg or 500), times=1)
        if name == "timeout":
            return Fault(kind="timeout", delay_s=float(arg or DEFAULT_TIMEOUT_DELAY_S))
        if name in ("delay", "latency"):
            return Fault(kind="latency", delay_s=float(arg or 1))
        if name == "safety":
            return Fault(kind="safety", where="prompt" if arg == "prompt" else "output")
        if name == "text_only":
            return Fault(kind="text_only")
        if name == "short":
            return Fault(kind="short", count=int(arg or 1))
        if name == "disconnect":
            return Fault(kind="disconnect")
    except ValueError:
        return None
    return None
