"""The store contract (app/store/base.py), run against SQLite and Redis alike.

The clock is injected: every test passes `now` explicitly, starting from T0 (a UTC midnight).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.store.base import (
    Admission,
    AuditEntry,
    AuditQuery,
    ConsoleSession,
    Store,
    TaskRecord,
    UsageGroup,
    UsageQuery,
    UsageRecord,
    UsageStatus,
    hash_secret,
)
from tests.store.conftest import DAY, T0, Backend, make_key

KEY = "key_test"


async def admit(
    store: Store,
    rid: str,
    now: float = T0,
    *,
    key_id: str = KEY,
    cost: int = 140_000,
    rpm: int = 1000,
    max_concurrency: int = 1000,
    hold_s: float = 600.0,
    meta: dict[str, Any] | None = None,
) -> Admission:
    return await store.admit(
        key_id,
        reservation_id=rid,
        cost=cost,
        rpm=rpm,
        max_concurrency=max_concurrency,
        now=now,
        hold_s=hold_s,
        meta=meta if meta is not None else {"model": "gpt-image-1", "task_id": f"task-{rid}"},
    )


def record(
    rid: str,
    *,
    key_id: str = KEY,
    model: str = "gpt-image-1",
    images: int = 1,
    status: UsageStatus = "succeeded",
    at: float = T0 + 1,
    error_code: str | None = None,
) -> UsageRecord:
    return UsageRecord(
        reservation_id=rid,
        key_id=key_id,
        model=model,
        size_tier="1k",
        images=images,
        credits=0,  # the store fills in what it actually charged
        reserved=0,
        task_id=f"task-{rid}",
        trace_id=f"trace-{rid}",
        status=status,
        latency_ms=1234,
        created_at=at,
        error_code=error_code,
    )


async def balance(store: Store, key_id: str = KEY) -> int:
    key = await store.get_key(key_id)
    assert key is not None
    return key.balance


# --- keys


async def test_create_get_find_list(store: Store) -> None:
    assert await store.ping()
    key = make_key(rpm=30, max_concurrency=2, models=["gpt-image-1"], expires_at=T0 + DAY)
    await store.create_key(key)
    await store.create_key(make_key("key_other", created_at=T0 + 5))

    assert await store.get_key(KEY) == key
    assert await store.find_key_by_hash(hash_secret(f"secret-{KEY}")) == key
    assert await store.find_key_by_hash(hash_secret("nope")) is None
    assert await store.get_key("key_missing") is None
    assert [k.id for k in await store.list_keys()] == [KEY, "key_other"]
    assert "key_hash" not in key.public() and "webhook_secret" not in key.public()


async def test_create_duplicates_refused(store: Store) -> None:
    await store.create_key(make_key())
    with pytest.raises(ValueError):
        await store.create_key(make_key())  # same id, same hash
    other = make_key("key_2")
    other.key_hash = make_key().key_hash
    with pytest.raises(ValueError):
        await store.create_key(other)  # same secret under another id
    assert [k.id for k in await store.list_keys()] == [KEY]


async def test_update_key(store: Store) -> None:
    await store.create_key(make_key(rpm=10, expires_at=T0 + DAY))
    updated = await store.update_key(
        KEY,
        {"name": "renamed", "rpm": 20, "max_concurrency": 3, "models": ["a", "b"]},
    )
    assert updated is not None
    assert (updated.name, updated.rpm, updated.max_concurrency, updated.models) == (
        "renamed",
        20,
        3,
        ["a", "b"],
    )
    updated = await store.update_key(KEY, {"rpm": None, "expires_at": None, "disabled": True})
    assert updated is not None
    assert (updated.rpm, updated.expires_at, updated.disabled) == (None, None, True)
    assert updated.balance == 1_000_000 and updated.max_concurrency == 3
    assert await store.get_key(KEY) == updated
    with pytest.raises(ValueError):
        await store.update_key(KEY, {"balance": 5})
    with pytest.raises(ValueError):
        await store.update_key(KEY, {"rpm": 0})
    assert await store.update_key("key_missing", {"name": "x"}) is None
    assert await store.get_key("key_missing") is None  # not re-created by the update


async def test_delete_key(store: Store) -> None:
    await store.create_key(make_key())
    assert await store.delete_key(KEY)
    assert not await store.delete_key(KEY)
    assert await store.get_key(KEY) is None
    assert await store.find_key_by_hash(make_key().key_hash) is None
    assert await store.list_keys() == []
    assert (await admit(store, "r1")).status == "invalid_token"
    await store.create_key(make_key())  # the id and secret are free again
    assert (await admit(store, "r2")).ok


async def test_settle_after_delete_still_ledgers(store: Store) -> None:
    await store.create_key(make_key())
    assert (await admit(store, "r1")).ok
    assert await store.delete_key(KEY)
    assert await store.settle("r1", KEY, 140_000, record("r1")) == "settled"
    rows = await store.usage_records(UsageQuery())
    assert [(r.reservation_id, r.credits) for r in rows] == [("r1", 140_000)]
    assert await store.get_key(KEY) is None  # settling did not resurrect the key


# --- credits


async def test_top_up_and_deduct(store: Store) -> None:
    await store.create_key(make_key(balance=0))
    assert await store.adjust_balance(KEY, 1_500_000, "top up", T0) == 1_500_000
    assert await store.adjust_balance(KEY, -500_000, "refund to customer", T0 + 1) == 1_000_000
    with pytest.raises(ValueError):
        await store.adjust_balance(KEY, -1_000_001, None, T0 + 2)
    assert await balance(store) == 1_000_000
    assert await store.adjust_balance(KEY, -1_000_000, None, T0 + 3) == 0
    with pytest.raises(KeyError):
        await store.adjust_balance("key_missing", 5, None, T0)
    log = await store.credit_log(KEY)  # type: ignore[attr-defined]
    assert [(e["amount"], e["balance_after"], e["note"]) for e in log] == [
        (-1_000_000, 0, None),
        (-500_000, 1_000_000, "refund to customer"),
        (1_500_000, 1_500_000, "top up"),
    ]
    assert log[-1]["created_at"] == T0


# --- reserve -> settle -> refund


async def test_admit_settle_refund_exact_balances(store: Store) -> None:
    await store.create_key(make_key(balance=1_000_000))
    a = await admit(store, "r1", cost=210_000)
    assert a.ok and a.balance == 790_000
    assert await balance(store) == 790_000
    # charged less than reserved (dall-e-2 returned fewer images): the rest comes back
    assert await store.settle("r1", KEY, 140_000, record("r1")) == "settled"
    assert await balance(store) == 860_000

    assert (await admit(store, "r2", T0 + 2, cost=140_000)).balance == 720_000
    # upstream failed: refund in full
    assert await store.settle("r2", KEY, 0, record("r2", status="failed", images=0)) == "settled"
    assert await balance(store) == 860_000

    rows = await store.usage_records(UsageQuery(key_id=KEY))
    assert {r.reservation_id: (r.credits, r.reserved, r.status) for r in rows} == {
        "r1": (140_000, 210_000, "succeeded"),
        "r2": (0, 140_000, "failed"),
    }


async def test_settle_twice_charges_once(store: Store) -> None:
    await store.create_key(make_key())
    assert (await admit(store, "r1")).ok
    assert await store.settle("r1", KEY, 140_000, record("r1")) == "settled"
    assert await store.settle("r1", KEY, 140_000, record("r1")) == "gone"
    assert await store.settle("r1", KEY, 0, record("r1")) == "gone"  # nor refunded after the fact
    assert await balance(store) == 860_000
    assert len(await store.usage_records(UsageQuery())) == 1
    assert await store.settle("never-admitted", KEY, 5, record("never-admitted")) == "gone"


async def test_settle_clamps_charge_to_reserved(store: Store) -> None:
    await store.create_key(make_key())
    assert (await admit(store, "r1", cost=100_000)).ok
    assert await store.settle("r1", KEY, 999_999, record("r1")) == "settled"
    assert await balance(store) == 900_000
    (row,) = await store.usage_records(UsageQuery())
    assert (row.credits, row.reserved) == (100_000, 100_000)


async def test_same_reservation_id_admitted_once(store: Store) -> None:
    """A client retry of `admit` (e.g. after a timeout) must not reserve twice."""
    await store.create_key(make_key())
    assert (await admit(store, "r1")).balance == 860_000
    again = await admit(store, "r1", T0 + 1)
    assert again.ok and again.balance == 860_000
    assert await balance(store) == 860_000


async def test_zero_cost_admission(store: Store) -> None:
    await store.create_key(make_key(balance=0))
    a = await admit(store, "r1", cost=0)
    assert a.ok and a.balance == 0
    assert await store.settle("r1", KEY, 0, record("r1")) == "settled"
    assert await balance(store) == 0


# --- expiry


async def test_expiry_and_sweep_refund(store: Store) -> None:
    await store.create_key(make_key())
    meta = {"model": "gemini-2.5-flash-image", "size_tier": "request", "task_id": "t-9"}
    meta |= {"trace_id": "tr-9"}
    assert (await admit(store, "r1", cost=350_000, hold_s=120, meta=meta)).ok
    assert (await admit(store, "r2", T0 + 100, cost=140_000, hold_s=120)).ok
    assert await balance(store) == 510_000

    assert await store.sweep(T0 + 119.999) == 0
    assert await store.sweep(T0 + 120) == 1  # expires_at <= now
    assert await balance(store) == 860_000
    assert await store.sweep(T0 + 120) == 0
    assert await store.settle("r1", KEY, 350_000, record("r1")) == "gone"  # too late: refunded
    assert await balance(store) == 860_000

    (row,) = await store.usage_records(UsageQuery(key_id=KEY))
    assert row.reservation_id == "r1" and row.status == "expired"
    assert (row.credits, row.reserved, row.images) == (0, 350_000, 0)
    assert (row.model, row.task_id, row.trace_id) == ("gemini-2.5-flash-image", "t-9", "tr-9")
    assert row.created_at == T0 + 120 and row.latency_ms == 120_000
    assert row.error_code == "reservation_expired"

    assert await store.sweep(T0 + 1000) == 1
    assert await balance(store) == 1_000_000


async def test_expired_reservation_frees_slot_on_next_admit(store: Store) -> None:
    """A crashed request's slot comes back on the key's next request, before any sweep."""
    await store.create_key(make_key())
    assert (await admit(store, "r1", max_concurrency=1, hold_s=30)).ok
    assert (await admit(store, "r2", T0 + 29, max_concurrency=1)).status == "concurrency_limited"
    a = await admit(store, "r3", T0 + 30, max_concurrency=1)
    assert a.ok and a.balance == 860_000  # r1 refunded, r3 reserved
    assert [r.status for r in await store.usage_records(UsageQuery())] == ["expired"]


async def test_extend(store: Store) -> None:
    await store.create_key(make_key())
    assert (await admit(store, "r1", hold_s=60)).ok
    assert await store.extend("r1", KEY, T0 + 600) == "live"
    assert await store.sweep(T0 + 300) == 0
    assert await balance(store) == 860_000
    assert await store.settle("r1", KEY, 140_000, record("r1")) == "settled"
    assert await store.extend("r1", KEY, T0 + 900) == "gone"  # settled: gone
    assert await store.extend("nope", KEY, T0 + 900) == "gone"
    assert (await admit(store, "r2", T0 + 301, hold_s=60)).ok
    assert await store.sweep(T0 + 361) == 1
    assert await store.extend("r2", KEY, T0 + 900) == "gone"  # expired: gone


async def test_settle_answers_three_ways(store: Store) -> None:
    """Settled now / already settled (a remembered charge) / gone (refunded or expired)."""
    await store.create_key(make_key())
    assert (await admit(store, "t1")).ok
    assert await store.settle("t1", KEY, 140_000, record("t1"), remember_s=60) == "settled"
    assert await store.settle("t1", KEY, 140_000, record("t1"), remember_s=60) == (
        "already_settled"
    )
    assert await store.extend("t1", KEY, T0 + 900) == "settled"
    # a refund is never remembered as a charge: the next settle finds it gone
    assert (await admit(store, "t2")).ok
    refund = record("t2", status="failed", images=0)
    assert await store.settle("t2", KEY, 0, refund, remember_s=60) == "settled"
    assert await store.settle("t2", KEY, 140_000, record("t2"), remember_s=60) == "gone"
    assert await store.extend("t2", KEY, T0 + 900) == "gone"
    assert await balance(store) == 1_000_000 - 140_000
    # gone -> reserve again under the same id -> charged once more, exactly once
    assert (await admit(store, "t2")).ok
    assert await store.settle("t2", KEY, 140_000, record("t2"), remember_s=60) == "settled"
    assert await balance(store) == 1_000_000 - 280_000
    assert len(await store.usage_records(UsageQuery(key_id=KEY))) == 3


async def test_settle_keeps_the_task_record_in_the_same_step(store: Store) -> None:
    await store.create_key(make_key())
    await store.create_key(make_key("key_other"))
    assert (await admit(store, "r1")).ok
    body = b'{"id":"r1","status":"succeeded"}'
    task = TaskRecord("r1", body, 3600)
    assert await store.settle("r1", KEY, 140_000, record("r1"), task=task) == "settled"
    assert await store.task_record(KEY, "r1") == body
    assert await store.task_record("key_other", "r1") is None  # another key's task is not yours
    assert await store.task_record(KEY, "nope") is None
    # a settle that finds nothing to settle writes nothing
    other = TaskRecord("r9", b"{}", 3600)
    assert await store.settle("r9", KEY, 0, record("r9"), task=other) == "gone"
    assert await store.task_record(KEY, "r9") is None


# --- ledger


async def _fill_ledger(store: Store) -> None:
    """Day 1: a=2 succeeded (gpt-image-1), 1 failed (dall-e-2); b=1 succeeded (dall-e-2).
    Day 2: a=1 succeeded (dall-e-2, 2 images), 1 expired (gpt-image-1)."""
    await store.create_key(make_key("key_a", balance=10_000_000))
    await store.create_key(make_key("key_b", balance=10_000_000))

    async def one(key_id: str, rid: str, at: float, model: str, charge: int, **kw: Any) -> None:
        assert (await admit(store, rid, at, key_id=key_id, meta={"model": model})).ok
        assert await store.settle(
            rid, key_id, charge, record(rid, key_id=key_id, model=model, at=at + 1, **kw)
        )

    await one("key_a", "a1", T0 + 10, "gpt-image-1", 40_000)
    await one("key_a", "a2", T0 + 20, "gpt-image-1", 60_000)
    await one("key_a", "a3", T0 + 30, "dall-e-2", 0, status="failed", images=0)
    await one("key_b", "b1", T0 + 40, "dall-e-2", 20_000)
    await one("key_a", "a4", T0 + DAY + 10, "dall-e-2", 40_000, images=2)
    assert (await admit(store, "a5", T0 + DAY + 20, key_id="key_a", hold_s=5)).ok
    assert await store.sweep(T0 + DAY + 100) == 1


async def test_usage_records_filters_and_pages(store: Store) -> None:
    await _fill_ledger(store)
    every = await store.usage_records(UsageQuery())
    assert [r.reservation_id for r in every] == ["a5", "a4", "b1", "a3", "a2", "a1"]
    assert [r.credits for r in every] == [0, 40_000, 20_000, 0, 60_000, 40_000]
    assert [r.status for r in every][:2] == ["expired", "succeeded"]
    first = every[-1]
    assert (first.key_id, first.model, first.size_tier, first.images) == (
        "key_a",
        "gpt-image-1",
        "1k",
        1,
    )
    assert (first.task_id, first.trace_id, first.latency_ms, first.created_at) == (
        "task-a1",
        "trace-a1",
        1234,
        T0 + 11,
    )

    def ids(rows: list[UsageRecord]) -> list[str]:
        return [r.reservation_id for r in rows]

    assert ids(await store.usage_records(UsageQuery(key_id="key_b"))) == ["b1"]
    assert ids(await store.usage_records(UsageQuery(model="dall-e-2"))) == ["a4", "b1", "a3"]
    q = UsageQuery(key_id="key_a", model="gpt-image-1")
    assert ids(await store.usage_records(q)) == ["a5", "a2", "a1"]
    # since is inclusive (a2 at T0+21), until exclusive (b1 at T0+41)
    assert ids(await store.usage_records(UsageQuery(since=T0 + 21, until=T0 + 41))) == [
        "a3",
        "a2",
    ]
    assert ids(await store.usage_records(UsageQuery(since=T0 + 21, until=T0 + 41.5))) == [
        "b1",
        "a3",
        "a2",
    ]
    assert ids(await store.usage_records(UsageQuery(since=T0 + 21.5, until=T0 + 41))) == ["a3"]
    assert ids(await store.usage_records(UsageQuery(), limit=2)) == ["a5", "a4"]
    assert ids(await store.usage_records(UsageQuery(), limit=2, offset=2)) == ["b1", "a3"]
    assert ids(await store.usage_records(UsageQuery(), limit=10, offset=5)) == ["a1"]
    assert await store.usage_records(UsageQuery(key_id="key_missing")) == []


async def test_usage_summary_groups(store: Store) -> None:
    await _fill_ledger(store)
    day1, day2 = "2024-06-01", "2024-06-02"
    assert await store.usage_summary(UsageQuery(), "day") == [
        UsageGroup(day1, requests=4, succeeded=3, failed=1, images=3, credits=120_000),
        UsageGroup(day2, requests=2, succeeded=1, failed=1, images=2, credits=40_000, estimated=1),
    ]
    assert await store.usage_summary(UsageQuery(), "model") == [
        UsageGroup("dall-e-2", requests=3, succeeded=2, failed=1, images=3, credits=60_000),
        UsageGroup(
            "gpt-image-1", requests=3, succeeded=2, failed=1, images=2, credits=100_000, estimated=1
        ),
    ]
    assert await store.usage_summary(UsageQuery(), "key") == [
        UsageGroup(
            "key_a", requests=5, succeeded=3, failed=2, images=4, credits=140_000, estimated=1
        ),
        UsageGroup("key_b", requests=1, succeeded=1, failed=0, images=1, credits=20_000),
    ]
    # filters: whole days (the Redis store answers from its aggregates) ...
    assert await store.usage_summary(UsageQuery(since=T0 + DAY), "key") == [
        UsageGroup(
            "key_a", requests=2, succeeded=1, failed=1, images=2, credits=40_000, estimated=1
        ),
    ]
    assert await store.usage_summary(UsageQuery(until=T0 + DAY, model="dall-e-2"), "day") == [
        UsageGroup(day1, requests=2, succeeded=1, failed=1, images=1, credits=20_000),
    ]
    # ... and arbitrary instants (it scans the ledger): the same answers either way
    assert await store.usage_summary(UsageQuery(since=T0 + 15, until=T0 + 35), "model") == [
        UsageGroup("dall-e-2", requests=1, succeeded=0, failed=1, images=0, credits=0),
        UsageGroup("gpt-image-1", requests=1, succeeded=1, failed=0, images=1, credits=60_000),
    ]
    q = UsageQuery(key_id="key_a", since=T0 + 0.5)
    assert await store.usage_summary(q, "day") == [
        UsageGroup(day1, requests=3, succeeded=2, failed=1, images=2, credits=100_000),
        UsageGroup(day2, requests=2, succeeded=1, failed=1, images=2, credits=40_000, estimated=1),
    ]
    assert await store.usage_summary(UsageQuery(key_id="key_missing"), "day") == []


# --- rate limits


async def test_sliding_window_rpm(store: Store) -> None:
    await store.create_key(make_key(balance=100_000_000))
    t = T0 + 5.25
    for i in range(30):
        a = await admit(store, f"r{i}", t, rpm=30)
        assert a.ok and a.limit == 30 and a.remaining == 29 - i
        assert a.reset_s == pytest.approx(60.0)
    refused = await admit(store, "r30", t + 10, rpm=30)
    assert refused.status == "rate_limited"
    assert refused.retry_after_s == pytest.approx(50.0, abs=1e-6)
    assert refused.reset_s == pytest.approx(50.0, abs=1e-6)
    assert (refused.remaining, refused.limit, refused.balance) == (
        0,
        30,
        100_000_000 - 30 * 140_000,
    )
    assert (await admit(store, "r31", t + 59.999, rpm=30)).status == "rate_limited"
    again = await admit(store, "r32", t + 60.001, rpm=30)
    assert again.ok and again.remaining == 29 and again.reset_s == pytest.approx(60.0)


async def test_window_slides_rather_than_resets(store: Store) -> None:
    """15 at t and 15 at t+30: at t+60.5 only the first 15 have left, so exactly 15 fit, and
    the next one waits for the t+30 batch (a fixed window would have let 30 through)."""
    await store.create_key(make_key(balance=100_000_000))
    t = T0 + 7
    for i in range(15):
        assert (await admit(store, f"a{i}", t, rpm=30, cost=1)).ok
    for i in range(15):
        assert (await admit(store, f"b{i}", t + 30, rpm=30, cost=1)).ok
    assert (await admit(store, "c", t + 45, rpm=30, cost=1)).status == "rate_limited"
    for i in range(15):
        a = await admit(store, f"d{i}", t + 60.5, rpm=30, cost=1)
        assert a.ok and a.remaining == 14 - i
    refused = await admit(store, "e", t + 61, rpm=30, cost=1)
    assert refused.status == "rate_limited"
    assert refused.retry_after_s == pytest.approx(29.0, abs=1e-6)  # the t+30 batch leaves
    assert refused.reset_s == pytest.approx(59.5, abs=1e-6)  # the t+60.5 batch leaves


async def test_refusals_consume_nothing(store: Store) -> None:
    await store.create_key(make_key(balance=200_000))
    assert (await admit(store, "r1", rpm=2, max_concurrency=5)).ok
    # insufficient credits: no window entry, no slot, no balance change
    poor = await admit(store, "r2", T0 + 1, rpm=2, max_concurrency=5)
    assert poor.status == "insufficient_credits" and poor.balance == 60_000
    assert poor.remaining == 1
    for i in range(5):  # refused by rate limit: repeated refusals don't push the window out
        assert (await admit(store, f"x{i}", T0 + 2 + i, rpm=1, cost=1)).status == "rate_limited"
    a = await admit(store, "r3", T0 + 2, rpm=2, max_concurrency=2, cost=60_000)
    assert a.ok and a.balance == 0 and a.remaining == 0
    assert (await admit(store, "r4", T0 + 60.5, rpm=2, cost=0)).ok  # r1 left the window
    assert [r.reservation_id for r in await store.usage_records(UsageQuery())] == []


async def test_concurrency_slots(store: Store) -> None:
    await store.create_key(make_key())
    assert (await admit(store, "r1", max_concurrency=2)).ok
    assert (await admit(store, "r2", T0 + 1, max_concurrency=2)).ok
    third = await admit(store, "r3", T0 + 2, max_concurrency=2)
    assert third.status == "concurrency_limited"
    assert third.retry_after_s == pytest.approx(1.0)
    assert third.balance == 720_000 and third.remaining == 998
    assert await store.settle("r1", KEY, 140_000, record("r1")) == "settled"
    assert (await admit(store, "r3", T0 + 3, max_concurrency=2)).ok
    assert (await admit(store, "r4", T0 + 4, max_concurrency=2)).status == "concurrency_limited"


async def test_check_order(store: Store) -> None:
    """key -> rpm -> concurrency -> balance: each refusal names the first failing check."""
    await store.create_key(make_key(balance=150_000))
    assert (await admit(store, "r1", rpm=1, max_concurrency=1)).ok  # now: window, slot, funds full
    assert (await admit(store, "r2", T0 + 1, rpm=1, max_concurrency=1)).status == "rate_limited"
    s = await admit(store, "r3", T0 + 61, rpm=1, max_concurrency=1)
    assert s.status == "concurrency_limited"
    assert (await admit(store, "r4", T0 + 62, rpm=1, max_concurrency=2)).status == (
        "insufficient_credits"
    )
    await store.update_key(KEY, {"disabled": True})
    assert (await admit(store, "r5", T0 + 200, rpm=1, max_concurrency=1)).status == (
        "invalid_token"
    )


async def test_invalid_token(store: Store) -> None:
    assert (await admit(store, "r0", key_id="key_missing")).status == "invalid_token"
    await store.create_key(make_key("key_disabled", disabled=True))
    await store.create_key(make_key("key_expiring", expires_at=T0 + 100))
    refused = await admit(store, "r1", key_id="key_disabled")
    assert (refused.status, refused.balance) == ("invalid_token", 0)
    assert (await admit(store, "r2", T0 + 99.9, key_id="key_expiring")).ok
    assert (await admit(store, "r3", T0 + 100, key_id="key_expiring")).status == "invalid_token"
    # a revoke takes effect on the very next request
    await store.update_key("key_expiring", {"expires_at": None, "disabled": True})
    assert (await admit(store, "r4", T0 + 101, key_id="key_expiring")).status == "invalid_token"
    await store.update_key("key_expiring", {"disabled": False})
    assert (await admit(store, "r5", T0 + 102, key_id="key_expiring")).ok
    assert await balance(store, "key_disabled") == 1_000_000


# --- overspend


async def _overspend(stores: list[Store]) -> None:
    """1.00 credits, 200 concurrent admits of 0.14 spread over `stores`: exactly 7 fit."""
    await stores[0].create_key(make_key(balance=1_000_000))
    results = await asyncio.gather(
        *(
            admit(stores[i % len(stores)], f"r{i}", T0 + i * 0.001, rpm=10_000, max_concurrency=500)
            for i in range(200)
        )
    )
    ok = [f"r{i}" for i, a in enumerate(results) if a.ok]
    assert len(ok) == 7
    assert sum(a.status == "insufficient_credits" for a in results) == 193
    assert all(a.balance >= 0 for a in results)
    assert await balance(stores[-1]) == 20_000
    settled = await asyncio.gather(
        *(
            stores[i % len(stores)].settle(rid, KEY, 140_000, record(rid))
            for i, rid in enumerate(ok)
        )
    )
    assert all(settled)
    assert await balance(stores[0]) == 20_000
    rows = await stores[-1].usage_records(UsageQuery(key_id=KEY))
    assert sorted(r.reservation_id for r in rows) == sorted(ok)
    assert sum(r.credits for r in rows) == 980_000


async def test_no_overspend_under_concurrency(store: Store) -> None:
    await _overspend([store])


async def test_no_overspend_across_two_connections(backend: Backend) -> None:
    """Two store instances on the same data: two SQLite connections on one file (what two
    gateway processes do) or two Redis clients (two replicas)."""
    await _overspend([backend.new(), backend.new()])


async def test_reopen_keeps_state(backend: Backend) -> None:
    """Data lives in the file / server, not in the store object."""
    first = backend.new()
    await first.create_key(make_key())
    assert (await admit(first, "r1")).ok
    await first.close()
    second = backend.new()
    assert await balance(second) == 860_000
    assert await second.settle("r1", KEY, 100_000, record("r1")) == "settled"
    assert await balance(second) == 900_000


# --- channel, operation, upstream usage and cost


async def test_ledger_keeps_channel_operation_usage_and_cost(store: Store) -> None:
    """Rows keep who served them, what was asked, the upstream's report and its cost; the
    group-bys by channel and operation agree on both summary paths (whole days and instants)."""
    await store.create_key(make_key("key_a", balance=10_000_000))
    usage = {"input_tokens": 50, "input_tokens_details": {"text_tokens": 10, "image_tokens": 40}}

    async def one(rid: str, at: float, channel: str, operation: str, cost: int, **kw: Any) -> None:
        meta = {"model": "gpt-image-1", "channel": channel, "operation": operation}
        assert (await admit(store, rid, at, key_id="key_a", meta=meta)).ok
        row = record(rid, key_id="key_a", at=at + 1, **kw)
        row.channel, row.operation, row.cost_usd = channel, operation, cost
        row.usage = usage if cost else None
        row.cost_estimated = not cost
        assert await store.settle(rid, "key_a", 10_000, row)

    await one("c1", T0 + 10, "openai-a", "edit", 42_120)
    await one("c2", T0 + 20, "openai-b", "edit", 0)
    await one("c3", T0 + 30, "openai-b", "generate", 1_000_001)
    await one("c4", T0 + 40, "openai-b", "edit", 0, status="failed", images=0)
    assert (await admit(store, "c5", T0 + 50, key_id="key_a", hold_s=5, meta={
        "model": "gpt-image-1", "channel": "openai-a", "operation": "generate"})).ok  # fmt: skip
    assert await store.sweep(T0 + 100) == 1

    rows = {r.reservation_id: r for r in await store.usage_records(UsageQuery())}
    assert (rows["c1"].channel, rows["c1"].operation, rows["c1"].usage) == (
        "openai-a",
        "edit",
        usage,
    )
    assert (rows["c1"].cost_usd, rows["c1"].cost_estimated) == (42_120, False)
    assert (rows["c2"].cost_usd, rows["c2"].cost_estimated, rows["c2"].usage) == (0, True, None)
    assert (rows["c3"].operation, rows["c3"].cost_usd) == ("generate", 1_000_001)
    expired = rows["c5"]
    assert (expired.status, expired.channel, expired.operation) == (
        "expired",
        "openai-a",
        "generate",
    )
    assert (expired.cost_usd, expired.cost_estimated, expired.usage) == (0, True, None)

    def ids(rs: list[UsageRecord]) -> list[str]:
        return sorted(r.reservation_id for r in rs)

    assert ids(await store.usage_records(UsageQuery(channel="openai-b"))) == ["c2", "c3", "c4"]
    assert ids(await store.usage_records(UsageQuery(operation="generate"))) == ["c3", "c5"]
    assert ids(await store.usage_records(UsageQuery(status="failed"))) == ["c4"]
    assert ids(await store.usage_records(UsageQuery(status="expired", channel="openai-a"))) == [
        "c5"
    ]

    by_channel = [
        UsageGroup("openai-a", 2, 1, 1, 1, 10_000, cost_usd=42_120, estimated=1),
        UsageGroup("openai-b", 3, 2, 1, 2, 30_000, cost_usd=1_000_001, estimated=2),
    ]
    by_operation = [
        UsageGroup("edit", 3, 2, 1, 2, 30_000, cost_usd=42_120, estimated=2),
        UsageGroup("generate", 2, 1, 1, 1, 10_000, cost_usd=1_000_001, estimated=1),
    ]
    for q in (UsageQuery(), UsageQuery(since=T0 + 1)):  # aggregates, then a ledger scan
        assert await store.usage_summary(q, "channel") == by_channel
        assert await store.usage_summary(q, "operation") == by_operation
    assert await store.usage_summary(UsageQuery(channel="openai-b"), "operation") == [
        UsageGroup("edit", 2, 1, 1, 1, 20_000, cost_usd=0, estimated=2),
        UsageGroup("generate", 1, 1, 0, 1, 10_000, cost_usd=1_000_001, estimated=0),
    ]
    assert await store.usage_summary(UsageQuery(status="failed"), "day") == [
        UsageGroup("2024-06-01", 1, 0, 1, 0, 10_000, cost_usd=0, estimated=1),
    ]


# --- audit log


async def test_audit_log_filters_and_pages(store: Store) -> None:
    def entry(i: int, at: float, **kw: Any) -> AuditEntry:
        base: dict[str, Any] = {"actor": "admin", "source": "api", "action": "key.update",
                                "target": "key_a", "client": "127.0.0.1"}  # fmt: skip
        base.update(kw)
        return AuditEntry(id=f"aud_{i}", at=at, details={"n": i, "models": ["a"]}, **base)

    await store.add_audit(entry(1, T0 + 1, action="key.create"))
    await store.add_audit(entry(2, T0 + 2))
    await store.add_audit(entry(3, T0 + 3, actor="alice", source="cli", client="host-1"))
    await store.add_audit(entry(4, T0 + DAY, action="task.redeliver", target="task_9"))
    await store.add_audit(entry(5, T0 + DAY, target="key_b", client=None))

    def ids(es: list[AuditEntry]) -> list[str]:
        return [e.id for e in es]

    every = await store.audit_entries(AuditQuery())
    assert ids(every)[2:] == ["aud_3", "aud_2", "aud_1"]  # newest first
    assert set(ids(every)[:2]) == {"aud_4", "aud_5"}  # same instant: either order
    assert every[2] == entry(3, T0 + 3, actor="alice", source="cli", client="host-1")
    assert [e.client for e in every if e.id == "aud_5"] == [None]
    assert ids(await store.audit_entries(AuditQuery(target="key_a"))) == [
        "aud_3", "aud_2", "aud_1"
    ]  # fmt: skip
    assert ids(await store.audit_entries(AuditQuery(action="key.create"))) == ["aud_1"]
    assert ids(await store.audit_entries(AuditQuery(source="cli"))) == ["aud_3"]
    assert ids(await store.audit_entries(AuditQuery(actor="alice", source="api"))) == []
    assert ids(await store.audit_entries(AuditQuery(since=T0 + 2, until=T0 + 3))) == ["aud_2"]
    q = AuditQuery(target="key_a")
    assert ids(await store.audit_entries(q, limit=2)) == ["aud_3", "aud_2"]
    assert ids(await store.audit_entries(q, limit=2, offset=2)) == ["aud_1"]
    assert await store.audit_entries(q, limit=2, offset=3) == []


# --- console sessions


def _session(id_hash: str = "h" * 64, **fields: Any) -> ConsoleSession:
    base: dict[str, Any] = {
        "id_hash": id_hash,
        "role": "admin",
        "csrf": "csrf-token",
        "created_at": T0,
        "expires_at": T0 + 3600,
    }
    return ConsoleSession(**(base | fields))


async def test_session_seen_by_another_connection_until_it_expires(backend: Backend) -> None:
    """A session written through one replica's store is honoured by another's."""
    one, two = backend.new(), backend.new()
    s = _session(role="key", key_id=KEY)
    await one.put_session(s, T0)
    assert await two.get_session(s.id_hash, T0 + 10) == s
    assert await two.get_session(s.id_hash, T0 + 3600) is None  # expired at expires_at
    assert await two.get_session("x" * 64, T0) is None


async def test_session_delete_ends_it(store: Store) -> None:
    s = _session()
    await store.put_session(s, T0)
    assert await store.delete_session(s.id_hash)
    assert await store.get_session(s.id_hash, T0 + 1) is None
    assert not await store.delete_session(s.id_hash)


async def test_admin_session_ends_when_the_admin_key_changes(store: Store) -> None:
    """Rotating the admin key (restart with a new IMAGEGATE_ADMIN_KEY) signs every console
    admin out; an API-key session does not depend on it."""
    from app.console import sessions

    token, _ = await sessions.start(store, "admin", admin_key="old-admin-key")
    assert await sessions.lookup(store, token, "old-admin-key") is not None
    assert await sessions.lookup(store, token, "new-admin-key") is None

    key_token, _ = await sessions.start(store, "key", make_key(KEY))
    found = await sessions.lookup(store, key_token, "new-admin-key")
    assert found is not None and found.key_id == KEY
