"""The one caller between adapters and the network: channel and key choice, the kind's auth,
retries, failover, circuit state, concurrency caps and the request's deadline — for plain and
streamed calls alike.

Per attempt (`_attempt` / `_open_stream`, the single place an attempt happens):
  choose a channel (priority, then weight) → its next key → the adapter's `UpstreamRequest`
  for that channel's model id → URL and auth of the channel kind → one transport exchange →
  classify the outcome.

Outcomes and what follows (docs/CHANNELS.md):
- 2xx: the adapter parses it; the circuit closes.
- connection error, timeout, 5xx/408, 404 (model or deployment not found): a circuit failure;
  try another channel.
- 429: the key cools down for the upstream's hint (Retry-After, retry-after-ms, Gemini
  RetryInfo); try another key or channel. The circuit is not touched.
- 401/403: our credential: the key is taken out until an admin re-enables it; try another.
- any other 4xx: an answer about the request itself; it goes back to the client at once.
When no other channel is available, the failed one is retried after its backoff (its `retries`),
or when a cooling key frees up soon; all within `routing.max_attempts` and `routing.deadline_s`.
Money is not touched here: the service settles once, whatever the attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.core import tracing
from app.core.config import RoutingConfig
from app.core.errors import GatewayError
from app.upstream.channels import Channel, ChannelSet, Key
from app.upstream.hints import daily_quota, retry_hint
from app.upstream.kinds import url_for
from app.upstream.request import UpstreamRequest
from app.upstream.sse import MalformedEvent, sse_events
from app.upstream.transport import (
    ByteStream,
    TransportFailure,
    TransportTimeout,
    UpstreamResponse,
)

if TYPE_CHECKING:
    from app.adapters.base import Adapter
    from app.core.metrics import Metrics
    from app.domain.edit import EditOutput, EditRequest

log = logging.getLogger("imagegate.upstream")

RETRY_WAIT_CAP_S = 30.0  # never wait longer than this for a cooling key within one request
DEFAULT_429_COOLDOWN_S = 2.0  # a 429 without a hint
DAILY_QUOTA_COOLDOWN_S = 3600.0
STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2, "disabled": 3}


class _Failed(Exception):
    """An attempt that may be tried elsewhere; `final` is what the client gets if none is."""

    def __init__(self, outcome: str, final: GatewayError, *, channel_fault: bool) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.final = final
        self.channel_fault = channel_fault  # False: only the key was at fault (429, 401/403)


@dataclass
class _Budget:
    """One request's attempts: how many, until when, which channels failed, retries used."""

    max_attempts: int
    deadline: float
    attempts: int = 0
    failed: list[Channel] = field(default_factory=list)
    retried: dict[str, int] = field(default_factory=dict)
    last: GatewayError | None = None

    def note(self, channel: Channel, failed: _Failed) -> None:
        self.last = failed.final
        if failed.channel_fault and channel not in self.failed:
            self.failed.append(channel)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


class ServedStream:
    """An upstream stream: iterate it for the events; `channel` is the channel serving it."""

    def __init__(self) -> None:
        self.channel: str | None = None
        self._events: AsyncIterator[dict[str, Any]] | None = None

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        assert self._events is not None
        return self._events


class UpstreamCaller:
    def __init__(
        self, channels: ChannelSet, routing: RoutingConfig, metrics: Metrics | None = None
    ) -> None:
        self.channels = channels
        self.routing = routing
        self.metrics = metrics
        self._freed: asyncio.Event | None = None
        for c in channels.channels.values():
            self._publish_state(c, time.time())

    # -- public -----------------------------------------------------------------------------

    async def edit(self, adapter: Adapter, req: EditRequest, trace_id: str) -> EditOutput:
        """Run the request on the model's channels; the output names the serving channel."""
        budget = self._budget()
        while True:
            channel, key = await self._next(adapter.model, budget)
            up = adapter.build(req, self._model_id(channel, adapter), trace_id=trace_id)
            try:
                resp = await self._attempt(channel, key, up, adapter, budget)
            except _Failed as failed:
                budget.note(channel, failed)
                continue
            try:
                out = adapter.parse(resp, req)
            except GatewayError as err:
                raise _redacted(err, channel) from None
            out.channel = channel.name
            return out

    def stream(self, adapter: Adapter, req: EditRequest, trace_id: str) -> ServedStream:
        """The adapter's events, relayed; fails over only before the first event is yielded.
        The returned stream's `channel` names the serving channel from its first event on."""
        served = ServedStream()
        served._events = self._stream(adapter, req, trace_id, served)
        return served

    async def _stream(
        self, adapter: Adapter, req: EditRequest, trace_id: str, served: ServedStream
    ) -> AsyncIterator[dict[str, Any]]:
        budget = self._budget()
        while True:
            channel, key = await self._next(adapter.model, budget)
            model_id = self._model_id(channel, adapter)
            up = adapter.build(req, model_id, trace_id=trace_id, stream=True)
            stack = contextlib.AsyncExitStack()
            try:
                events, first = await self._open_stream(channel, key, up, adapter, budget, stack)
            except _Failed as failed:
                await stack.aclose()
                budget.note(channel, failed)
                continue
            except BaseException:
                await stack.aclose()
                raise
            served.channel = channel.name
            async with stack:
                ok = False
                try:
                    yield first
                    if adapter.stream_done(first):
                        ok = True
                        return
                    async for name, data in events:
                        event = adapter.event(name, data)
                        yield event
                        if adapter.stream_done(event):
                            ok = True
                            return
                    raise GatewayError(
                        "api_error", "upstream stream ended before the image was completed",
                        status=502,
                    )  # fmt: skip
                except TransportTimeout:
                    raise GatewayError(
                        "upstream_timeout", f"upstream {channel.name} timed out mid-stream",
                        status=504,
                    ) from None  # fmt: skip
                except (TransportFailure, MalformedEvent):
                    raise GatewayError(
                        "api_error", f"upstream {channel.name} stream interrupted", status=502
                    ) from None
                except GatewayError as err:
                    raise _redacted(err, channel) from None
                finally:
                    self._done(channel, "ok" if ok else "stream_error", failed=False)
            return

    # -- choosing --------------------------------------------------------------------------

    def _budget(self) -> _Budget:
        return _Budget(self.routing.max_attempts, time.monotonic() + self.routing.deadline_s)

    @staticmethod
    def _model_id(channel: Channel, adapter: Adapter) -> str:
        return channel.model_id(adapter.model, adapter.config.upstream_model)

    async def _next(self, model: str, budget: _Budget) -> tuple[Channel, Key]:
        """The channel and key of the next attempt, waiting (within the deadline) for a retry
        backoff, a cooling key or a free slot; raises the final error when there is none."""
        while budget.attempts < budget.max_attempts and budget.remaining() > 0:
            now = time.time()
            channel = self.channels.choose(model, now, budget.failed)
            if channel is None:
                channel = await self._retry_or_wait(model, budget)
                if channel is None:
                    break
                now = time.time()
                if not channel.available(now):
                    continue
            key = channel.next_key(now)
            if key is None:
                continue
            budget.attempts += 1
            # taken before any await, so a concurrent request sees the slot (and the half-open
            # probe) as taken; every attempt ends in `_done` or `_release`
            channel.in_flight += 1
            channel.circuit.started(now)
            return channel, key
        raise budget.last or self._none_available(model, budget)

    async def _retry_or_wait(self, model: str, budget: _Budget) -> Channel | None:
        now = time.time()
        channels = self.channels.of(model)
        # 1. a channel that failed in this request and has same-channel retries left
        for c in budget.failed:
            used = budget.retried.get(c.name, 0)
            if used < c.config.retries and c.available(now):
                budget.retried[c.name] = used + 1
                delay = _backoff(c.config.backoff_s, used)
                if delay >= budget.remaining():
                    return None
                await asyncio.sleep(delay)
                return c
        # 2. a key that cools down soon (a 429 with a short Retry-After)
        soon = [t for c in channels if (t := c.ready_at(now)) is not None and t > now]
        if soon:
            wait = min(soon) - now
            if wait <= min(RETRY_WAIT_CAP_S, budget.remaining()):
                await asyncio.sleep(wait)
                budget.failed.clear()  # the cooled channel is a fresh choice again
                return self.channels.choose(model, time.time())
            return None
        # 3. a channel busy at max_concurrency: wait for a slot
        while any(c.in_flight >= c.config.max_concurrency for c in channels):
            freed = self._slot_event()
            try:
                async with asyncio.timeout(budget.remaining()):
                    await freed.wait()
            except TimeoutError:
                return None
            chosen = self.channels.choose(model, time.time(), budget.failed)
            if chosen is not None:
                return chosen
        return None

    def _slot_event(self) -> asyncio.Event:
        if self._freed is None:
            self._freed = asyncio.Event()
        return self._freed

    def _none_available(self, model: str, budget: _Budget) -> GatewayError:
        if budget.remaining() <= 0:
            return GatewayError(
                "upstream_timeout", "upstream did not answer within the deadline", status=504
            )
        return GatewayError(
            "service_unavailable",
            f"no upstream channel is available for {model} right now; try again later",
            status=503,
        )

    # -- one attempt -------------------------------------------------------------------------

    async def _prepare(
        self, channel: Channel, key: Key, up: UpstreamRequest, adapter: Adapter
    ) -> tuple[str, dict[str, str]]:
        url = url_for(channel.config, up.action, up.model, adapter.model, up.stream)
        headers = dict(up.headers)
        try:
            auth = await channel.auth_headers(key)
        except Exception as exc:  # a service-account token could not be minted
            log.warning("upstream %s: no access token: %r", channel.name, exc)
            raise self._fail(channel, key, "auth_failed", _unreachable(channel)) from None
        headers.update(auth)  # the adapter's headers cannot override the credential
        return url, headers

    def _timeout(self, channel: Channel, budget: _Budget) -> float:
        return max(0.001, min(channel.config.timeout_s, budget.remaining()))

    async def _attempt(
        self, channel: Channel, key: Key, up: UpstreamRequest, adapter: Adapter, budget: _Budget
    ) -> UpstreamResponse:
        """One plain exchange on one channel with one key: returns a 2xx answer, raises
        `_Failed` for what may be tried elsewhere, or the client's error at once."""
        try:
            url, headers = await self._prepare(channel, key, up, adapter)
            with tracing.attempt(
                channel.name, adapter.model, budget.attempts, up.method, url
            ) as span:
                resp = await channel.transport.send(
                    up.method, url, headers, up.body, self._timeout(channel, budget)
                )
                tracing.set_status(span, resp.status)
        except TransportTimeout:
            raise self._fail(channel, key, "timeout", _timeout_error(channel)) from None
        except TransportFailure as exc:
            log.warning("upstream %s connection error: %s", channel.name, exc)
            raise self._fail(channel, key, "connection_error", _unreachable(channel)) from None
        except _Failed:
            raise
        except BaseException:
            self._done(channel, "cancelled", failed=False)
            raise
        return self._judge(channel, key, resp, adapter)

    async def _open_stream(
        self,
        channel: Channel,
        key: Key,
        up: UpstreamRequest,
        adapter: Adapter,
        budget: _Budget,
        stack: contextlib.AsyncExitStack,
    ) -> tuple[AsyncIterator[tuple[str, dict[str, Any]]], dict[str, Any]]:
        """Open a stream and read its first event (until then it may still fail over)."""
        timeout = self._timeout(channel, budget)
        try:
            url, headers = await self._prepare(channel, key, up, adapter)
            with tracing.attempt(
                channel.name, adapter.model, budget.attempts, up.method, url
            ) as span:
                opened: UpstreamResponse | ByteStream = await stack.enter_async_context(
                    channel.transport.open(up.method, url, headers, up.body, timeout)
                )
                tracing.set_status(
                    span,
                    opened.status
                    if isinstance(opened, UpstreamResponse)
                    else opened.response.status,
                )
            if isinstance(opened, UpstreamResponse):
                self._judge(channel, key, opened, adapter)  # raises: not a 2xx
                raise AssertionError("unreachable")  # pragma: no cover
            events = sse_events(opened.lines())
            name, data = await anext(events)
        except TransportTimeout:
            raise self._fail(channel, key, "timeout", _timeout_error(channel)) from None
        except (TransportFailure, StopAsyncIteration, MalformedEvent) as exc:
            log.warning("upstream %s stream failed before its first event: %r", channel.name, exc)
            raise self._fail(channel, key, "connection_error", _unreachable(channel)) from None
        except (_Failed, GatewayError):
            raise
        except BaseException:
            self._done(channel, "cancelled", failed=False)
            raise
        try:
            first = adapter.event(name, data)
        except GatewayError as err:
            if err.status >= 500:  # the upstream failed before anything reached the client
                raise self._fail(channel, key, "server_error", _redacted(err, channel)) from None
            self._done(channel, "client_error", failed=False)
            raise _redacted(err, channel) from None
        return events, first

    def _judge(
        self, channel: Channel, key: Key, resp: UpstreamResponse, adapter: Adapter
    ) -> UpstreamResponse:
        status = resp.status
        if 200 <= status < 300:
            self._done(channel, "ok", failed=False)
            return resp
        final = _redacted(adapter.error(resp), channel)
        now = time.time()
        if status == 429:
            hint = retry_hint(resp.headers, resp.body)
            if daily_quota(resp.body):
                hint = DAILY_QUOTA_COOLDOWN_S
            key.cooldown_until = now + (hint if hint is not None else DEFAULT_429_COOLDOWN_S)
            self._note(channel, f"HTTP 429 (key {key.prefix} cooling down)")
            self._release(channel, "rate_limited", failed=False)
            raise _Failed("rate_limited", final, channel_fault=False)
        if status in (401, 403):
            key.disabled = f"HTTP {status} from the upstream"
            self._note(channel, f"HTTP {status}: key {key.prefix} taken out")
            self._release(channel, "auth_failed", failed=False)
            raise _Failed("auth_failed", final, channel_fault=False)
        no_retry = resp.headers.get("x-should-retry", "").lower() == "false"
        if status == 404 or status == 408 or status >= 500:
            outcome = "not_found" if status == 404 else "server_error"
            failure = self._fail(channel, key, outcome, final, detail=f"HTTP {status}")
            if no_retry:
                raise final from None
            raise failure
        self._done(channel, "client_error", failed=False)
        raise final

    # -- bookkeeping -------------------------------------------------------------------------

    def _fail(
        self, channel: Channel, key: Key, outcome: str, final: GatewayError, detail: str = ""
    ) -> _Failed:
        self._note(channel, detail or outcome.replace("_", " "))
        self._done(channel, outcome, failed=True)
        return _Failed(outcome, final, channel_fault=True)

    def _note(self, channel: Channel, error: str) -> None:
        channel.last_error, channel.last_error_at = error, time.time()

    def _release(self, channel: Channel, outcome: str, *, failed: bool) -> None:
        """End an attempt that says nothing about the channel's health (429, 401/403)."""
        channel.circuit.released()
        self._finish(channel, outcome, failed)

    def _done(self, channel: Channel, outcome: str, *, failed: bool) -> None:
        now = time.time()
        if failed:
            if channel.circuit.failed(now):
                log.warning(
                    "upstream %s circuit open for %.0f s",
                    channel.name, channel.circuit.cooldown_s,
                )  # fmt: skip
        elif outcome in ("ok", "client_error"):
            channel.circuit.succeeded()
        else:
            channel.circuit.released()
        self._finish(channel, outcome, failed)

    def _finish(self, channel: Channel, outcome: str, failed: bool) -> None:
        now = time.time()
        channel.in_flight -= 1
        channel.window.add(now, failed or outcome in ("rate_limited", "auth_failed"))
        if self.metrics is not None:
            self.metrics.upstream_attempts.inc(channel=channel.name, outcome=outcome)
        self._publish_state(channel, now)
        if self._freed is not None:
            self._freed.set()
            self._freed = None

    def _publish_state(self, channel: Channel, now: float) -> None:
        if self.metrics is not None:
            self.metrics.channel_state.set(STATE_VALUE[channel.state(now)], channel=channel.name)

    def publish(self) -> None:
        """Refresh every channel's state gauge (after an admin change)."""
        now = time.time()
        for c in self.channels.channels.values():
            self._publish_state(c, now)


def _backoff(base: float, attempt: int) -> float:
    """Exponential backoff with equal jitter, capped at 30 s."""
    cap = min(base * (2**attempt), 30.0)
    return cap / 2 + random.uniform(0, cap / 2)


def _timeout_error(channel: Channel) -> GatewayError:
    return GatewayError("upstream_timeout", f"upstream {channel.name} timed out", status=504)


def _unreachable(channel: Channel) -> GatewayError:
    return GatewayError("api_error", "upstream unreachable", status=502)


def _redacted(err: GatewayError, channel: Channel) -> GatewayError:
    """The client never sees our key, even when an upstream echoes it."""
    message = channel.redact(err.message)
    if message == err.message:
        return err
    return GatewayError(err.code, message, param=err.param, status=err.status, headers=err.headers)
