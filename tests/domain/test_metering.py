"""`Meter` against a real SQLite store with a clock the test drives: authenticate → admit →
settle, and what the client sees when the store is down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.core.config import GatewayConfig, Settings, load_config
from app.core.errors import GatewayError
from app.domain.audit import Actor
from app.domain.keys import KeyAdmin, NewKey
from app.domain.metering import Hold, Meter, Settlement, rate_headers
from app.domain.pricing import quote
from app.store.base import Admission, UsageQuery
from app.store.redis_store import RedisStore
from app.store.sqlite_store import SQLiteStore
from tests.support.net import free_port

ACTOR = Actor("test", "cli")

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_717_200_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def config() -> GatewayConfig:
    return load_config(Settings(), ROOT / "config" / "gateway.yaml")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "imagegate.db", synchronous="NORMAL")
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def meter(store: SQLiteStore, config: GatewayConfig, clock: Clock) -> Meter:
    return Meter(store, config, clock=clock)


@pytest.fixture
def admin(store: SQLiteStore, config: GatewayConfig) -> KeyAdmin:
    return KeyAdmin(store, set(config.models))


def bearer(new: NewKey) -> str:
    return f"Bearer {new.secret}"


async def expect(code: str, status: int, awaitable: object) -> GatewayError:
    with pytest.raises(GatewayError) as exc:
        await awaitable  # type: ignore[misc]
    assert (exc.value.code, exc.value.status) == (code, status), exc.value
    return exc.value


# --- authenticate ---------------------------------------------------------------------------
async def test_authenticate_ok(meter: Meter, admin: KeyAdmin) -> None:
    new = await admin.create(by=ACTOR, name="a", credits=1_000_000)
    key = await meter.authenticate(bearer(new))
    assert key.id == new.key.id
    assert (await meter.authenticate(f"bearer   {new.secret}  ")).id == new.key.id


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Token ig-abc",
        "ig-abc",
        "Bearer ig-unknown-key",
    ],
)
async def test_authenticate_refuses(meter: Meter, header: str | None) -> None:
    err = await expect("invalid_token", 401, meter.authenticate(header))
    assert err.type == "authentication_error"


async def test_wrong_scheme_with_a_real_key(meter: Meter, admin: KeyAdmin) -> None:
    new = await admin.create(by=ACTOR, name="a", credits=0)
    await expect("invalid_token", 401, meter.authenticate(f"Basic {new.secret}"))
    await expect("invalid_token", 401, meter.authenticate(new.secret))


async def test_disabled_key(meter: Meter, admin: KeyAdmin) -> None:
    new = await admin.create(by=ACTOR, name="a", credits=0)
    await admin.update(new.key.id, {"disabled": True}, by=ACTOR)
    await expect("invalid_token", 401, meter.authenticate(bearer(new)))


async def test_expired_key(meter: Meter, admin: KeyAdmin, clock: Clock) -> None:
    new = await admin.create(by=ACTOR, name="a", credits=0, expires_at=T0 + 10)
    assert await meter.authenticate(bearer(new))
    clock.advance(10)  # expires_at <= now: expired
    await expect("invalid_token", 401, meter.authenticate(bearer(new)))


async def test_cache_ttl_and_forget(
    meter: Meter, admin: KeyAdmin, clock: Clock, config: GatewayConfig
) -> None:
    ttl = config.metering.key_cache_ttl_s
    assert ttl > 0
    new = await admin.create(by=ACTOR, name="a", credits=0)
    await meter.authenticate(bearer(new))
    await admin.update(new.key.id, {"disabled": True}, by=ACTOR)
    # within the TTL the cached (enabled) key answers; admit re-checks in the store anyway
    clock.advance(ttl / 2)
    assert (await meter.authenticate(bearer(new))).disabled is False
    clock.advance(ttl)
    await expect("invalid_token", 401, meter.authenticate(bearer(new)))

    await admin.update(new.key.id, {"disabled": False}, by=ACTOR)
    # the disabled state is cached too: a re-enable shows after the TTL (or a forget)
    await expect("invalid_token", 401, meter.authenticate(bearer(new)))
    clock.advance(ttl)
    await meter.authenticate(bearer(new))  # cached again (enabled)
    await admin.revoke(new.key.id, by=ACTOR)
    assert await meter.authenticate(bearer(new))  # still cached
    meter.forget(new.key.id)
    await expect("invalid_token", 401, meter.authenticate(bearer(new)))


async def test_forget_only_drops_that_key(meter: Meter, admin: KeyAdmin) -> None:
    a = await admin.create(by=ACTOR, name="a", credits=0)
    b = await admin.create(by=ACTOR, name="b", credits=0)
    await meter.authenticate(bearer(a))
    await meter.authenticate(bearer(b))
    await admin.revoke(a.key.id, by=ACTOR)
    await admin.revoke(b.key.id, by=ACTOR)
    meter.forget(a.key.id)
    await expect("invalid_token", 401, meter.authenticate(bearer(a)))
    assert (await meter.authenticate(bearer(b))).id == b.key.id


class CountingStore(SQLiteStore):
    """The real SQLite store, counting bearer lookups (how many reached the store)."""

    lookups = 0

    async def find_key_by_hash(self, key_hash: str) -> Any:
        self.lookups += 1
        await asyncio.sleep(0.01)  # answers later, as a store over the network does
        return await super().find_key_by_hash(key_hash)


async def test_concurrent_misses_share_one_lookup(
    tmp_path: Path, config: GatewayConfig, clock: Clock
) -> None:
    """When the key cache lapses under load, the requests in flight wait for one store lookup
    instead of each making its own; a caller that goes away does not cancel it for the rest."""
    store = CountingStore(tmp_path / "imagegate.db", synchronous="NORMAL")
    try:
        admin = KeyAdmin(store, set(config.models))
        new = await admin.create(by=ACTOR, name="a", credits=0)
        meter = Meter(store, config, clock=clock)
        leaver = asyncio.ensure_future(meter.authenticate(bearer(new)))
        calls = [meter.authenticate(bearer(new)) for _ in range(20)]
        await asyncio.sleep(0)
        leaver.cancel()
        keys = await asyncio.gather(*calls)
        assert {k.id for k in keys} == {new.key.id} and store.lookups == 1
        await meter.authenticate(bearer(new))  # cached
        assert store.lookups == 1
        clock.advance(config.metering.key_cache_ttl_s)  # lapsed: one more lookup for all
        await asyncio.gather(*(meter.authenticate(bearer(new)) for _ in range(5)))
        assert store.lookups == 2
        # an unknown bearer: every waiter is refused, the refusal is not cached
        errs = await asyncio.gather(
            *(meter.authenticate("Bearer ig-unknown") for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(e, GatewayError) and e.code == "invalid_token" for e in errs)
        assert store.lookups == 3
        await expect("invalid_token", 401, meter.authenticate("Bearer ig-unknown"))
        assert store.lookups == 4
    finally:
        await store.close()


def test_check_model(meter: Meter) -> None:
    from app.store.base import ApiKey

    key = ApiKey("key_x", "x", "h", "ig-x", 0, "w", T0, models=["nano-banana"])
    meter.check_model(key, "nano-banana")
    with pytest.raises(GatewayError) as exc:
        meter.check_model(key, "gpt-image-2")
    assert (exc.value.code, exc.value.status, exc.value.param) == ("token_mismatched", 400, "model")
    key.models = None
    meter.check_model(key, "gpt-image-2")


# --- admit ----------------------------------------------------------------------------------
async def admit(
    meter: Meter,
    new: NewKey,
    config: GatewayConfig,
    rid: str,
    model: str = "nano-banana",
    size: str | None = None,
    n: int = 1,
) -> Hold:
    key = await meter.authenticate(bearer(new))
    q = quote(config.models[model], size, n)
    return await meter.admit(key, model=model, quote=q, reservation_id=rid, trace_id="t-" + rid)


async def test_admit_reserves_and_reports_rate_headers(
    meter: Meter, admin: KeyAdmin, store: SQLiteStore, config: GatewayConfig
) -> None:
    new = await admin.create(by=ACTOR, name="a", credits=1_000_000, rpm=5)
    hold = await admit(meter, new, config, "r1")
    assert hold.quote.reserve == 140_000 and hold.model == "nano-banana"
    assert hold.started == T0
    assert (await store.get_key(new.key.id)).balance == 860_000  # type: ignore[union-attr]
    assert hold.headers == {
        "x-ratelimit-limit-requests": "5",
        "x-ratelimit-remaining-requests": "4",
        "x-ratelimit-reset-requests": "1m0s",
    }


async def test_admit_402_insufficient_credits(
    meter: Meter, admin: KeyAdmin, store: SQLiteStore, config: GatewayConfig
) -> None:
    new = await admin.create(by=ACTOR, name="a", credits=139_999)
    err = await expect("insufficient_credits", 402, admit(meter, new, config, "r1"))
    assert "0.14" in err.message
    assert err.type == "insufficient_quota"
    assert err.headers["x-ratelimit-limit-requests"] == "60"  # config default rpm
    assert "retry-after" not in err.headers
    assert (await store.get_key(new.key.id)).balance == 139_999  # type: ignore[union-attr]


async def test_admit_429_rate_limited(
    meter: Meter, admin: KeyAdmin, clock: Clock, config: GatewayConfig
) -> None:
    new = await admin.create(by=ACTOR, name="a", credits=100_000_000, rpm=3, max_concurrency=100)
    for i in range(3):
        await admit(meter, new, config, f"r{i}")
        clock.advance(10)
    err = await expect("too_many_requests", 429, admit(meter, new, config, "r3"))
    assert err.type == "rate_limit_error"
    assert "3 requests per minute" in err.message
    # the first request (at T0) leaves the 60 s window at T0+60; now is T0+30
    assert err.headers["retry-after"] == "30"
    assert err.headers["x-ratelimit-limit-requests"] == "3"
    assert err.headers["x-ratelimit-remaining-requests"] == "0"
    assert err.headers["x-ratelimit-reset-requests"] == "50s"  # newest (T0+20) + 60 - now
    clock.advance(30)  # the oldest request has left the window: a slot again
    await admit(meter, new, config, "r4")


async def test_admit_429_concurrency(meter: Meter, admin: KeyAdmin, config: GatewayConfig) -> None:
    new = await admin.create(by=ACTOR, name="a", credits=100_000_000, rpm=100, max_concurrency=2)
    h1 = await admit(meter, new, config, "r1")
    await admit(meter, new, config, "r2")
    err = await expect("too_many_requests", 429, admit(meter, new, config, "r3"))
    assert "concurrency limit" in err.message
    assert int(err.headers["retry-after"]) >= 1
    assert err.headers["x-ratelimit-limit-requests"] == "100"
    await h1.settle(1)  # frees a slot
    await admit(meter, new, config, "r3")


async def test_admit_sees_a_disable_before_the_cache_does(
    meter: Meter, admin: KeyAdmin, config: GatewayConfig
) -> None:
    new = await admin.create(by=ACTOR, name="a", credits=1_000_000)
    key = await meter.authenticate(bearer(new))
    await admin.update(
        new.key.id, {"disabled": True}, by=ACTOR
    )  # not through this meter: cache is stale
    q = quote(config.models["nano-banana"], None, 1)
    await expect(
        "invalid_token",
        401,
        meter.admit(key, model="nano-banana", quote=q, reservation_id="r", trace_id="t"),
    )
    # admit dropped the stale cache entry: authenticate now asks the store
    await expect("invalid_token", 401, meter.authenticate(bearer(new)))


def test_rate_headers_durations() -> None:
    def reset(seconds: float) -> str:
        return rate_headers(Admission("ok", 0, 1, 0, seconds))["x-ratelimit-reset-requests"]

    assert reset(0) == "0ms" and reset(0.02) == "20ms" and reset(1) == "1s"
    assert reset(59.2) == "1m0s" and reset(90) == "1m30s"
    assert rate_headers(Admission("ok", 0, 5, -3, 0))["x-ratelimit-remaining-requests"] == "0"


# --- settle ---------------------------------------------------------------------------------
async def test_settle_charges_the_delivery(
    meter: Meter, admin: KeyAdmin, store: SQLiteStore, clock: Clock, config: GatewayConfig
) -> None:
    new = await admin.create(by=ACTOR, name="a", credits=1_000_000, rpm=100)
    hold = await admit(meter, new, config, "r1", model="dall-e-2", size="256x256", n=4)
    assert (await store.get_key(new.key.id)).balance == 920_000  # type: ignore[union-attr]
    clock.advance(1.5)
    assert (await hold.settle(3)).charge == 60_000
    assert (await store.get_key(new.key.id)).balance == 940_000  # type: ignore[union-attr]
    [row] = await store.usage_records(UsageQuery(key_id=new.key.id))
    assert (row.status, row.images, row.credits, row.reserved) == ("succeeded", 3, 60_000, 80_000)
    assert (row.model, row.size_tier, row.task_id, row.trace_id) == (
        "dall-e-2",
        "1k",
        "r1",
        "t-r1",
    )
    assert row.latency_ms == 1500 and row.created_at == T0 + 1.5 and row.error_code is None


async def test_settle_refunds_a_failure(
    meter: Meter, admin: KeyAdmin, store: SQLiteStore, config: GatewayConfig
) -> None:
    new = await admin.create(by=ACTOR, name="a", credits=1_000_000)
    hold = await admit(meter, new, config, "r1", model="gpt-image-2", size="2048x2048")
    assert hold.quote.reserve == 300_000
    await hold.refund("upstream_timeout", "the upstream timed out")
    assert (await store.get_key(new.key.id)).balance == 1_000_000  # type: ignore[union-attr]
    [row] = await store.usage_records(UsageQuery(key_id=new.key.id))
    assert (row.status, row.images, row.credits, row.error_code) == (
        "failed",
        0,
        0,
        "upstream_timeout",
    )
    assert row.size_tier == "other"


async def test_settle_is_once(
    meter: Meter, admin: KeyAdmin, store: SQLiteStore, config: GatewayConfig
) -> None:
    new = await admin.create(by=ACTOR, name="a", credits=1_000_000)
    hold = await admit(meter, new, config, "r1")
    async with hold:
        await hold.settle(1)
    async with hold:  # settled: leaving the block again refunds nothing
        pass
    await meter.write(hold, images=1)  # a second settle round trip changes nothing
    assert (await store.get_key(new.key.id)).balance == 860_000  # type: ignore[union-attr]
    assert len(await store.usage_records(UsageQuery(key_id=new.key.id))) == 1


async def test_seven_requests_cost_exactly_0_98(
    meter: Meter, admin: KeyAdmin, store: SQLiteStore, config: GatewayConfig
) -> None:
    new = await admin.create(by=ACTOR, name="a", credits=1_000_000, rpm=100, max_concurrency=100)
    for i in range(7):
        await (await admit(meter, new, config, f"r{i}")).settle(1)
    assert (await store.get_key(new.key.id)).balance == 20_000  # type: ignore[union-attr]
    await expect("insufficient_credits", 402, admit(meter, new, config, "r7"))


async def test_expired_hold_is_refunded_by_sweep(
    meter: Meter, admin: KeyAdmin, store: SQLiteStore, clock: Clock, config: GatewayConfig
) -> None:
    new = await admin.create(by=ACTOR, name="a", credits=1_000_000)
    await admit(meter, new, config, "r1")
    clock.advance(config.metering.reservation_ttl_s + 1)
    assert await meter.sweep() == 1
    assert (await store.get_key(new.key.id)).balance == 1_000_000  # type: ignore[union-attr]
    [row] = await store.usage_records(UsageQuery(key_id=new.key.id))
    assert row.status == "expired" and row.credits == 0
    # the row says what was reserved for: tier, task, channel, operation; its cost is unknown
    assert (row.size_tier, row.task_id, row.channel, row.operation) == (
        "request", "r1", "gemini", "edit"
    )  # fmt: skip
    assert (row.cost_usd, row.cost_estimated, row.usage) == (0, True, None)


async def test_settle_prices_the_reported_usage_on_the_channel(
    meter: Meter, admin: KeyAdmin, store: SQLiteStore, config: GatewayConfig
) -> None:
    new = await admin.create(by=ACTOR, name="a", credits=1_000_000)
    usage = {"promptTokenCount": 10, "candidatesTokenCount": 1290}
    await (await admit(meter, new, config, "r1")).settle(1, usage=usage)
    hold = await admit(meter, new, config, "r2", model="dall-e-2", size="512x512", n=2)
    await hold.settle(2, size="512x512", channel="openai-b")
    rows = {r.reservation_id: r for r in await store.usage_records(UsageQuery())}
    # nano-banana list prices: 10 x $0.30 + 1290 x $30 per million tokens
    assert (rows["r1"].cost_usd, rows["r1"].cost_estimated) == (38_703, False)
    assert (rows["r1"].channel, rows["r1"].usage) == ("gemini", usage)
    assert (rows["r2"].cost_usd, rows["r2"].cost_estimated, rows["r2"].channel) == (
        36_000, False, "openai-b"
    )  # fmt: skip


# --- the store is down ----------------------------------------------------------------------
@pytest.fixture
async def dead_meter(config: GatewayConfig, clock: Clock) -> AsyncIterator[Meter]:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5)
    try:
        yield Meter(store, config, clock=clock)
    finally:
        await store.close()


async def test_store_down_is_503(dead_meter: Meter, config: GatewayConfig) -> None:
    err = await expect("service_unavailable", 503, dead_meter.authenticate("Bearer ig-whatever"))
    assert "try again" in err.message and err.type == "api_error"
    from app.store.base import ApiKey

    key = ApiKey("key_x", "x", "h", "ig-x", 10**6, "w", T0)
    q = quote(config.models["nano-banana"], None, 1)
    await expect(
        "service_unavailable",
        503,
        dead_meter.admit(key, model="nano-banana", quote=q, reservation_id="r", trace_id="t"),
    )
    hold = Hold(dead_meter, "r", "key_x", "nano-banana", q, "t", T0)
    await expect("service_unavailable", 503, dead_meter.extend(hold, T0 + 100))
    assert await dead_meter.sweep() == 0  # the background sweeper never raises


async def test_settle_with_the_store_down_does_not_fail_the_request(
    dead_meter: Meter, config: GatewayConfig
) -> None:
    q = quote(config.models["nano-banana"], None, 1)
    hold = Hold(dead_meter, "r", "key_x", "nano-banana", q, "t", T0)
    started = time.monotonic()
    assert await hold.settle(1) == Settlement("unknown", 140_000)
    assert time.monotonic() - started < 5  # a few short retries, then the sweeper's job


# --- the hold as a context manager --------------------------------------------------------
async def test_hold_refunds_unless_settled(
    meter: Meter, admin: KeyAdmin, store: SQLiteStore, config: GatewayConfig
) -> None:
    new = await admin.create(by=ACTOR, name="a", credits=1_000_000, rpm=100, max_concurrency=100)
    with pytest.raises(GatewayError):
        async with await admit(meter, new, config, "r1"):
            raise GatewayError("upstream_timeout", "slow")
    with pytest.raises(RuntimeError):
        async with await admit(meter, new, config, "r2"):
            raise RuntimeError("a bug")

    async def cancelled() -> None:
        async with await admit(meter, new, config, "r3"):
            await asyncio.Event().wait()

    job = asyncio.create_task(cancelled())
    await asyncio.sleep(0.05)
    job.cancel()
    await asyncio.gather(job, return_exceptions=True)
    assert (await store.get_key(new.key.id)).balance == 1_000_000  # type: ignore[union-attr]
    rows = await store.usage_records(UsageQuery(key_id=new.key.id))
    assert sorted(r.error_code or "" for r in rows) == [
        "api_error",
        "api_error",
        "upstream_timeout",
    ]


async def test_settle_of_a_gone_reservation_reserves_again_or_402(
    meter: Meter, admin: KeyAdmin, store: SQLiteStore, config: GatewayConfig
) -> None:
    new = await admin.create(by=ACTOR, name="a", credits=200_000, rpm=100, max_concurrency=100)
    hold = await admit(meter, new, config, "r1")
    await meter.write(hold, images=0, error_code="api_error")  # refunded behind its back
    assert (await hold.settle(1)).charge == 140_000  # reserved again, then charged once
    assert (await store.get_key(new.key.id)).balance == 60_000  # type: ignore[union-attr]
    poor_key = await admin.create(by=ACTOR, name="b", credits=150_000)
    poor = await admit(meter, poor_key, config, "r2")
    await meter.write(poor, images=0, error_code="api_error")  # refunded: 150_000 again
    await store.adjust_balance(poor_key.key.id, -50_000, "spent elsewhere", T0)
    await expect("insufficient_credits", 402, poor.settle(1))  # must not be delivered
    assert (await store.get_key(poor_key.key.id)).balance == 100_000  # type: ignore[union-attr]
