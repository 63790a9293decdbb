"""Channels and their health, per gateway process: keys, circuit breaker, concurrency, stats.

A channel is one configured upstream entry (docs/CHANNELS.md). Its health is local to this
process on purpose: a breaker reacts within a request or two and needs no store round trip on
the hot path; replicas each learn an outage on their own after `failure_threshold` failures.

Choosing: among a model's channels with the lowest priority that are available (not disabled,
circuit not open, a key not cooling down or taken out, below `max_concurrency`), one at random
in proportion to `weight`; keys of a channel in turn.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from app.core.config import RoutingConfig, UpstreamConfig
from app.upstream.kinds import PROTOCOL, ServiceAccountToken, key_header
from app.upstream.transport import AiohttpTransport, Transport, proxy_for, ssl_context

MAX_COOLDOWN_S = 600.0
STATS_WINDOW_S = 300.0
State = Literal["closed", "open", "half_open", "disabled"]


@dataclass(slots=True, eq=False)
class Key:
    """One credential of a channel's pool, known outside by its prefix only."""

    secret: str | None  # None: a service-account channel (tokens are minted)
    prefix: str
    cooldown_until: float = 0.0
    disabled: str | None = None  # why it was taken out (401/403), until re-enabled

    def usable(self, now: float) -> bool:
        return self.disabled is None and self.cooldown_until <= now

    def view(self, now: float) -> dict[str, Any]:
        state = "disabled" if self.disabled else "cooling" if self.cooldown_until > now else "ok"
        return {
            "prefix": self.prefix,
            "state": state,
            "cooldown_until": self.cooldown_until if self.cooldown_until > now else None,
            "disabled_reason": self.disabled,
        }


def key_prefixes(secrets: Sequence[str]) -> list[str]:
    """Short, unique-within-the-channel prefixes: 8 characters, longer only to tell keys apart,
    never more than half a key."""
    out = []
    for s in secrets:
        n = min(8, max(1, len(s) // 2))
        while n < len(s) // 2 and any(o != s and o[:n] == s[:n] for o in secrets):
            n += 1
        out.append(s[:n] + "…")
    return out


@dataclass(slots=True)
class Circuit:
    """Closed → (threshold consecutive failures) → open for `cooldown` → half-open: one probe;
    its success closes the circuit, its failure re-opens it for twice as long (≤ 10 min)."""

    threshold: int
    base_cooldown_s: float
    state: Literal["closed", "open", "half_open"] = "closed"
    failures: int = 0
    cooldown_s: float = 0.0
    open_until: float = 0.0
    probing: bool = False

    def passable(self, now: float) -> bool:
        if self.state == "closed":
            return True
        if self.state == "open":
            return now >= self.open_until
        return not self.probing  # half-open: one probe at a time

    def started(self, now: float) -> bool:
        """An attempt begins; True when it is the half-open probe."""
        if self.state == "open" and now >= self.open_until:
            self.state = "half_open"
        if self.state == "half_open":
            self.probing = True
            return True
        return False

    def succeeded(self) -> None:
        self.state, self.failures, self.probing, self.cooldown_s = "closed", 0, False, 0.0

    def failed(self, now: float) -> bool:
        """Count a failure; True when this one opened (or re-opened) the circuit."""
        self.failures += 1
        if self.state == "half_open":
            self.probing = False
            self._open(now, min(self.cooldown_s * 2, MAX_COOLDOWN_S))
            return True
        if self.state == "closed" and self.failures >= self.threshold:
            self._open(now, self.base_cooldown_s)
            return True
        return False

    def released(self) -> None:
        """The probe ended without a verdict on the channel (e.g. the client's own error)."""
        self.probing = False

    def _open(self, now: float, cooldown: float) -> None:
        self.state, self.cooldown_s, self.open_until = "open", cooldown, now + cooldown


@dataclass(slots=True)
class Window:
    """Attempts and failures over the last five minutes, in 10-second buckets."""

    buckets: deque[list[float]] = field(default_factory=deque)  # [start, attempts, failures]

    def add(self, now: float, failed: bool) -> None:
        start = now - now % 10
        if not self.buckets or self.buckets[-1][0] != start:
            self.buckets.append([start, 0, 0])
            while self.buckets and self.buckets[0][0] <= now - STATS_WINDOW_S:
                self.buckets.popleft()
        bucket = self.buckets[-1]
        bucket[1] += 1
        if failed:
            bucket[2] += 1

    def totals(self, now: float) -> tuple[int, int]:
        live = [b for b in self.buckets if b[0] > now - STATS_WINDOW_S]
        return int(sum(b[1] for b in live)), int(sum(b[2] for b in live))


class Channel:
    """One upstream channel with its keys, breaker, in-flight count and recent stats."""

    def __init__(
        self,
        name: str,
        config: UpstreamConfig,
        routing: RoutingConfig,
        transport: Transport | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.kind = config.kind
        self.protocol = PROTOCOL[config.kind]
        self.token: ServiceAccountToken | None = None
        if config.service_account:
            assert config.credentials_file is not None
            self.token = ServiceAccountToken(config.credentials_file)
            self.keys = [Key(None, "sa:" + self.token.email.split("@")[0])]
        else:
            secrets = config.keys
            self.keys = [Key(s, p) for s, p in zip(secrets, key_prefixes(secrets), strict=True)]
            if not self.keys:
                self.keys = [Key("", "(none)")]  # an upstream without auth (local simulator)
        self.transport: Transport = transport or AiohttpTransport(
            max_connections=config.max_concurrency,
            connect_timeout_s=config.connect_timeout_s,
            proxy=proxy_for(config.base_url),
            ssl_context=ssl_context(config.ca_file),
        )
        self.circuit = Circuit(routing.failure_threshold, routing.cooldown_s)
        self.disabled = False  # drained by an admin
        self.in_flight = 0
        self.window = Window()
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self._next_key = 0

    def __repr__(self) -> str:  # never a key
        return f"Channel({self.name!r}, kind={self.kind!r}, base_url={self.config.base_url!r})"

    @property
    def secrets(self) -> list[str]:
        return [k.secret for k in self.keys if k.secret]

    def state(self, now: float) -> State:
        if self.disabled:
            return "disabled"
        if self.circuit.state == "open" and now >= self.circuit.open_until:
            return "half_open"
        return self.circuit.state

    def available(self, now: float) -> bool:
        return (
            not self.disabled
            and self.in_flight < self.config.max_concurrency
            and self.circuit.passable(now)
            and any(k.usable(now) for k in self.keys)
        )

    def next_key(self, now: float) -> Key | None:
        """The next usable key in turn."""
        n = len(self.keys)
        for i in range(n):
            key = self.keys[(self._next_key + i) % n]
            if key.usable(now):
                self._next_key = (self._next_key + i + 1) % n
                return key
        return None

    def ready_at(self, now: float) -> float | None:
        """When this channel may be usable again without an admin (a key's cooldown ends), or
        None when it will not be soon (disabled, circuit open, every key taken out)."""
        if self.disabled or not self.circuit.passable(now):
            return None
        cooling = [k.cooldown_until for k in self.keys if k.disabled is None]
        return min(cooling) if cooling else None

    async def auth_headers(self, key: Key) -> dict[str, str]:
        if self.token is not None:
            return await self.token.headers()
        if not key.secret:
            return {}
        name, value = key_header(self.kind, key.secret)
        return {name: value}

    def model_id(self, gateway_model: str, upstream_model: str) -> str:
        """The id this channel's provider knows the model by (`model_map`)."""
        mm = self.config.model_map
        return mm.get(gateway_model) or mm.get(upstream_model) or upstream_model

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def view(self, now: float, models: Iterable[str]) -> dict[str, Any]:
        attempts, failures = self.window.totals(now)
        c = self.circuit
        return {
            "name": self.name,
            "kind": self.kind,
            "base_url": self.config.base_url,
            "models": sorted(models),
            "state": self.state(now),
            "priority": self.config.priority,
            "weight": self.config.weight,
            "keys": [k.view(now) for k in self.keys],
            "in_flight": self.in_flight,
            "max_concurrency": self.config.max_concurrency,
            "attempts_5m": attempts,
            "failures_5m": failures,
            "consecutive_failures": c.failures,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "cooldown_until": c.open_until if c.state == "open" and c.open_until > now else None,
        }


class ChannelSet:
    """Every channel of this process, and each model's channels grouped by priority."""

    def __init__(
        self,
        channels: dict[str, Channel],
        routes: dict[str, list[str]],
    ) -> None:
        self.channels = channels
        self.routes = routes
        # per model: [(priority, [channels...]), ...] lowest priority first
        self._tiers: dict[str, list[list[Channel]]] = {}
        for model, names in routes.items():
            by_prio: dict[int, list[Channel]] = {}
            for n in names:
                by_prio.setdefault(channels[n].config.priority, []).append(channels[n])
            self._tiers[model] = [by_prio[p] for p in sorted(by_prio)]

    def models_of(self, channel: str) -> list[str]:
        return [m for m, names in self.routes.items() if channel in names]

    def of(self, model: str) -> list[Channel]:
        return [c for tier in self._tiers.get(model, []) for c in tier]

    def choose(self, model: str, now: float, exclude: Iterable[Channel] = ()) -> Channel | None:
        """The channel for the next attempt, or None when none is available right now."""
        skip = set(exclude) if exclude else ()
        for tier in self._tiers.get(model, ()):
            if len(tier) == 1:
                c = tier[0]
                if c not in skip and c.available(now):
                    return c
                continue
            ready = [c for c in tier if c not in skip and c.available(now)]
            if not ready:
                continue
            if len(ready) == 1:
                return ready[0]
            total = sum(c.config.weight for c in ready)
            point = random.random() * total
            for c in ready:
                point -= c.config.weight
                if point < 0:
                    return c
            return ready[-1]
        return None

    # -- admin -------------------------------------------------------------------------------

    def view(self, now: float) -> list[dict[str, Any]]:
        return [c.view(now, self.models_of(name)) for name, c in self.channels.items()]

    def get(self, name: str) -> Channel | None:
        return self.channels.get(name)

    def enable_key(self, channel: Channel, prefix: str) -> list[Key]:
        """Put every key of `channel` whose prefix starts with `prefix` back in use (and end
        its cooldown); the keys it matched."""
        wanted = prefix.rstrip("…")
        matched = [k for k in channel.keys if wanted and k.prefix.rstrip("…").startswith(wanted)]
        for k in matched:
            k.disabled, k.cooldown_until = None, 0.0
        return matched

    async def aclose(self) -> None:
        for c in self.channels.values():
            await c.transport.aclose()


def now() -> float:
    return time.time()
