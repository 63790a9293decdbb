"""Authentication and metering around an upstream call: authenticate → admit → settle.

`authenticate` maps a bearer token to its key through a short in-process cache (the key's
enabled/expired state is re-checked by the store inside `admit`, so a revoke still bites on
the very next request on every replica). `admit` is the single store round trip before the
upstream call and returns a `Hold`; settling the hold is the single one after it (a refund is a
settle with charge 0). A `Hold` is an async context manager: leaving it without `settle` (an
error, a cancelled request) refunds, so no code path has to remember to. Request outcomes reach
the metrics in one place, `Meter.count`.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from app.core.config import GatewayConfig
from app.core.errors import GatewayError
from app.core.logging import fields, get_logger
from app.core.metrics import Metrics
from app.domain.cost import CostBook
from app.domain.pricing import Quote
from app.store.base import (
    Admission,
    ApiKey,
    ReservationState,
    Store,
    StoreUnavailable,
    TaskRecord,
    UsageRecord,
    hash_secret,
)

Clock = Callable[[], float]
#: Builds the task record a settle keeps for a synchronous request: (result, error) -> record.
Keep = Callable[[dict[str, Any] | None, dict[str, Any] | None], TaskRecord]
#: How long a queued task's charge is remembered, so a re-run knows it was paid for.
REMEMBER_CHARGED_S = 86400.0
#: A re-reservation of an admitted request checks the key and balance only, not rpm/slots.
_NO_LIMIT = 1 << 30
log = get_logger("imagegate.metering")


def _invalid() -> GatewayError:
    return GatewayError("invalid_token", "Invalid or missing API key")


def unavailable() -> GatewayError:
    return GatewayError(
        "service_unavailable", "metering store unavailable, try again shortly", status=503
    )


def _duration(seconds: float) -> str:
    """OpenAI's x-ratelimit-reset-* style: '20ms', '1s', '1m30s'."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    s = math.ceil(seconds)
    return f"{s // 60}m{s % 60}s" if s >= 60 else f"{s}s"


def rate_headers(adm: Admission) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": str(adm.limit),
        "x-ratelimit-remaining-requests": str(max(0, adm.remaining)),
        "x-ratelimit-reset-requests": _duration(adm.reset_s),
    }


@dataclass(slots=True, frozen=True)
class Settlement:
    """How a hold ended. `charge` is what this settle charged (0 when already charged)."""

    outcome: Literal["settled", "already_settled", "unknown"]
    charge: int


@dataclass(slots=True, eq=False)
class Hold:
    """A live reservation for one request: `async with hold:` refunds unless it was settled.

    `settle(images)` charges what was delivered, exactly once per reservation id however many
    times a queued task runs: a settle that finds the reservation already charged changes
    nothing, one that finds it gone (refunded or expired meanwhile) reserves again first --
    or raises 402, and then the result must not be delivered. `hand_over()` gives the
    reservation to a queued task (no refund when the block is left).
    """

    meter: Meter
    reservation_id: str
    key_id: str
    model: str
    quote: Quote
    trace_id: str
    started: float
    admission: Admission | None = None
    operation: str = "edit"
    keep: Keep | None = None  # synchronous requests: the task record settle stores with it
    remember_s: float = 0.0  # queued tasks: remember a charge this long (re-runs ask)
    hold_s: float | None = None  # how long a re-reservation holds
    done: bool = False

    @property
    def headers(self) -> dict[str, str]:
        return rate_headers(self.admission) if self.admission else {}

    async def __aenter__(self) -> Hold:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.done:
            return
        if isinstance(exc, GatewayError):
            code, message = exc.code, exc.message
        else:
            code, message = "api_error", "the request did not complete"
        # A cancelled request (client gone, shutdown) must still give its credits back.
        await asyncio.shield(self.refund(code, message))

    def hand_over(self) -> None:
        self.done = True

    async def settle(
        self,
        images: int,
        result: dict[str, Any] | None = None,
        *,
        usage: dict[str, Any] | None = None,
        size: str | None = None,
        channel: str | None = None,
    ) -> Settlement:
        """Charge for `images` delivered images; keep `result` as the task record if kept.
        `usage` (what the upstream reported), `size` and `channel` (the upstream that served
        it) price the row's upstream cost."""
        self.done = True
        task = self.keep(result, None) if self.keep is not None else None
        try:
            outcome = await self.meter.write(
                self, images=images, task=task, usage=usage, size=size, channel=channel
            )
            if outcome == "gone":
                await self.meter.reserve_again(self)
                outcome = await self.meter.write(
                    self, images=images, task=task, usage=usage, size=size, channel=channel
                )
        except GatewayError as err:
            self.meter.count(self.model, err.code)
            raise
        if outcome == "already_settled":
            self.meter.count(self.model, "ok")
            return Settlement("already_settled", 0)
        charge = self.quote.charge(images)
        self.meter.count(self.model, "ok", charge)
        return Settlement("unknown" if outcome == "unknown" else "settled", charge)

    async def refund(self, code: str, message: str) -> None:
        """Give the whole reservation back; the failure is ledgered (and kept) with `code`."""
        self.done = True
        error = {"code": code, "message": message}
        task = self.keep(None, error) if self.keep is not None else None
        await self.meter.write(self, images=0, error_code=code, task=task)
        self.meter.count(self.model, code)


class Meter:
    def __init__(
        self,
        store: Store,
        config: GatewayConfig,
        clock: Clock = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.metrics = metrics
        self._cache: dict[str, tuple[float, ApiKey]] = {}
        self._pending: dict[str, asyncio.Future[ApiKey | None]] = {}
        self._ttl = config.metering.key_cache_ttl_s
        self.costs = CostBook(config)

    def default_channel(self, model: str) -> str:
        """The upstream a model is configured with: the channel when none was reported."""
        model_cfg = self.config.models.get(model)
        return model_cfg.channels[0] if model_cfg is not None else ""

    async def authenticate(self, authorization: str | None) -> ApiKey:
        if not authorization:
            raise _invalid()
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _invalid()
        digest = hash_secret(token)
        now = self.clock()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            key = cached[1]
        else:
            key = await self._look_up(digest, now)
        # Constant-time confirmation of the stored hash (the dict lookup is by hash already).
        if not hmac.compare_digest(key.key_hash, digest):
            raise _invalid()
        if key.disabled or (key.expires_at is not None and key.expires_at <= now):
            raise _invalid()
        return key

    async def _look_up(self, digest: str, now: float) -> ApiKey:
        """The store's answer for a bearer hash, cached for `key_cache_ttl_s`. When the cache
        lapses under load every request in flight would miss at once; they share one lookup
        instead (shielded: a caller that goes away does not cancel it for the others)."""
        pending = self._pending.get(digest)
        if pending is None:
            pending = asyncio.ensure_future(self.store.find_key_by_hash(digest))
            self._pending[digest] = pending
            pending.add_done_callback(lambda f: self._lookup_done(digest, f))
        try:
            found = await asyncio.shield(pending)
        except StoreUnavailable:
            raise unavailable() from None
        if found is None:
            raise _invalid()
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now + self._ttl, found)
        return found

    def _lookup_done(self, digest: str, fut: asyncio.Future[ApiKey | None]) -> None:
        self._pending.pop(digest, None)
        if not fut.cancelled():
            fut.exception()  # retrieved: its callers may all have gone

    def forget(self, key_id: str) -> None:
        """Drop a key from this process's cache (admin changes on this replica)."""
        for digest, (_, key) in list(self._cache.items()):
            if key.id == key_id:
                self._cache.pop(digest, None)

    def check_model(self, key: ApiKey, model: str) -> None:
        if key.models is not None and model not in key.models:
            raise GatewayError(
                "token_mismatched", f"this API key may not use model {model!r}", param="model"
            )

    async def admit(
        self,
        key: ApiKey,
        *,
        model: str,
        quote: Quote,
        reservation_id: str,
        trace_id: str,
        hold_s: float | None = None,
        operation: str = "edit",
    ) -> Hold:
        now = self.clock()
        rpm = key.rpm or self.config.defaults.rpm
        conc = key.max_concurrency or self.config.defaults.max_concurrency
        try:
            adm = await self.store.admit(
                key.id,
                reservation_id=reservation_id,
                cost=quote.reserve,
                rpm=rpm,
                max_concurrency=conc,
                now=now,
                hold_s=hold_s or self.config.metering.reservation_ttl_s,
                meta=self._meta(model, quote, trace_id, reservation_id, operation),
            )
        except StoreUnavailable:
            raise unavailable() from None
        if adm.ok:
            return Hold(
                self, reservation_id, key.id, model, quote, trace_id, now, adm,
                operation=operation, hold_s=hold_s,
            )  # fmt: skip
        headers = rate_headers(adm)
        if adm.status == "invalid_token":
            self.forget(key.id)
            raise _invalid()
        if adm.status == "insufficient_credits":
            self.count(model, "insufficient_credits")
            raise GatewayError(
                "insufficient_credits",
                f"insufficient credits: this request costs {quote.reserve / 1e6:g}",
                headers=headers,
            )
        self.count(model, "too_many_requests")
        if self.metrics is not None:
            reason = "rpm" if adm.status == "rate_limited" else "concurrency"
            self.metrics.rejections.inc(reason=reason)
        retry = max(1, math.ceil(adm.retry_after_s))
        headers["retry-after"] = str(retry)
        what = "rate limit" if adm.status == "rate_limited" else "concurrency limit"
        limit = f"{rpm} requests per minute" if adm.status == "rate_limited" else f"{conc}"
        raise GatewayError(
            "too_many_requests",
            f"{what} reached ({limit}); retry after {retry}s",
            headers=headers,
        )

    def hold(
        self,
        *,
        reservation_id: str,
        key_id: str,
        model: str,
        quote: Quote,
        trace_id: str,
        hold_s: float | None = None,
        operation: str = "edit",
    ) -> Hold:
        """The hold of a reservation made earlier (a queued task's, made at submit time)."""
        return Hold(
            self, reservation_id, key_id, model, quote, trace_id, self.clock(),
            remember_s=REMEMBER_CHARGED_S, hold_s=hold_s, operation=operation,
        )  # fmt: skip

    def _meta(
        self, model: str, quote: Quote, trace_id: str, reservation_id: str, operation: str
    ) -> dict[str, Any]:
        """What the ledger row of an expired reservation is made of."""
        return {
            "model": model,
            "size_tier": quote.tier,
            "trace_id": trace_id,
            "task_id": reservation_id,
            "channel": self.default_channel(model),
            "operation": operation,
        }

    def count(self, model: str, status: str, charge: int = 0) -> None:
        """The one place a request's outcome reaches the metrics ("ok" or the error code)."""
        if self.metrics is None:
            return
        self.metrics.requests.inc(model=model, status=status)
        if charge:
            self.metrics.credits.inc(charge / 1e6, model=model)

    async def reserve_again(self, hold: Hold) -> None:
        """Reserve for an admitted request whose reservation is gone (refunded or expired),
        before delivering it: only the key and its balance are checked again."""
        now = self.clock()
        try:
            adm = await self.store.admit(
                hold.key_id,
                reservation_id=hold.reservation_id,
                cost=hold.quote.reserve,
                rpm=_NO_LIMIT,
                max_concurrency=_NO_LIMIT,
                now=now,
                hold_s=hold.hold_s or self.config.metering.reservation_ttl_s,
                meta=self._meta(
                    hold.model, hold.quote, hold.trace_id, hold.reservation_id, hold.operation
                ),
            )
        except StoreUnavailable:
            raise unavailable() from None
        if adm.status == "insufficient_credits":
            raise GatewayError(
                "insufficient_credits",
                f"insufficient credits: this request costs {hold.quote.reserve / 1e6:g}",
            )
        if not adm.ok:
            raise _invalid()
        hold.started = now
        log.info("reserved.again", extra=fields(trace_id=hold.trace_id, key_id=hold.key_id))

    async def write(
        self,
        hold: Hold,
        *,
        images: int,
        error_code: str | None = None,
        usage: dict[str, Any] | None = None,
        channel: str | None = None,
        size: str | None = None,
        task: TaskRecord | None = None,
    ) -> Literal["settled", "already_settled", "gone", "unknown"]:
        """The settle round trip: charge for the images returned (0 on failure), ledger it and
        keep `task`; "unknown" when the store could not be reached (logged, see below). Use
        `Hold.settle` / `Hold.refund`, which also count the outcome.

        `usage` is what the upstream reported, `channel` the upstream that served the request
        (default: the model's configured one) and `size` the size asked for: together they
        give the row's upstream cost (app/domain/cost.py)."""
        charge = 0 if error_code else hold.quote.charge(images)
        delivered = images if not error_code else 0
        channel = channel or self.default_channel(hold.model)
        cost = self.costs.cost(hold.model, channel, usage, images=delivered, size=size)
        now = self.clock()
        record = UsageRecord(
            reservation_id=hold.reservation_id,
            key_id=hold.key_id,
            model=hold.model,
            size_tier=hold.quote.tier,
            images=delivered,
            credits=charge,
            reserved=hold.quote.reserve,
            task_id=hold.reservation_id,
            trace_id=hold.trace_id,
            status="failed" if error_code else "succeeded",
            latency_ms=int((now - hold.started) * 1000),
            created_at=now,
            error_code=error_code,
            channel=channel,
            operation=hold.operation,
            usage=usage,
            cost_usd=cost.micro_usd,
            cost_estimated=cost.estimated,
        )
        # Settling must not be lost to a cancelled request task: shield it.
        remember = hold.remember_s if not error_code else 0.0
        for attempt in range(3):
            try:
                return await asyncio.shield(
                    self.store.settle(
                        hold.reservation_id, hold.key_id, charge, record,
                        task=task, remember_s=remember,
                    )
                )  # fmt: skip
            except StoreUnavailable:
                await asyncio.sleep(0.2 * (attempt + 1))
        # The upstream work is done; failing the client now would make it pay twice on retry.
        # The reservation stays held and the sweeper refunds it at expiry (logged loudly).
        log.error(
            "settle.failed",
            extra=fields(trace_id=hold.trace_id, key_id=hold.key_id, charge=charge),
        )
        return "unknown"

    async def extend(self, hold: Hold, until: float) -> ReservationState:
        """Keep a queued task's reservation alive, or learn that it was charged or is gone."""
        try:
            return await self.store.extend(hold.reservation_id, hold.key_id, until)
        except StoreUnavailable:
            raise unavailable() from None

    async def sweep(self) -> int:
        try:
            return await self.store.sweep(self.clock())
        except StoreUnavailable:
            return 0
