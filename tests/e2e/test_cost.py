"""Upstream cost through a running gateway, on both stores: each ledger row prices what the
simulator reported (OpenAI `usage`, Gemini `usageMetadata`) at the shipped list prices, exactly;
dall-e-2 is priced by size; a success without a usage report is an estimate; every group-by,
the CSV and /v1/me agree with the rows.

The expected costs are computed here by hand from the list prices (a price of $P per million
tokens is P micro-dollars per token), not by the gateway's own cost code.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Stack, start_stack
from tests.e2e.test_admin import PNG, edit
from tests.support.redis_server import RedisServer

# micro-dollars per token (text in, image in, text out, image out), from the shipped config
GPT_IMAGE_1 = (5, 10, 10, 40)
NANO_BANANA = (Decimal("0.30"), Decimal("0.30"), Decimal("2.50"), Decimal("30.00"))


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def stack(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[Stack]:
    s = start_stack(redis_url=redis_server.url if request.param == "redis" else None)
    try:
        yield s
    finally:
        s.gateway.stop()
        s.sim.stop()


def _openai_cost(usage: dict[str, Any]) -> int:
    t_in, i_in, t_out, i_out = GPT_IMAGE_1
    out = usage.get("output_tokens_details")
    image_out = out["image_tokens"] if out else usage["output_tokens"]
    text_out = out["text_tokens"] if out else 0
    details = usage["input_tokens_details"]
    return (
        details["text_tokens"] * t_in
        + details["image_tokens"] * i_in
        + image_out * i_out
        + text_out * t_out
    )


def _gemini_cost(meta: dict[str, Any]) -> int:
    t_in, i_in, t_out, i_out = NANO_BANANA
    prompt = {d["modality"]: d["tokenCount"] for d in meta["promptTokensDetails"]}
    cand = {d["modality"]: d["tokenCount"] for d in meta["candidatesTokensDetails"]}
    exact = (
        prompt.get("TEXT", 0) * t_in
        + prompt.get("IMAGE", 0) * i_in
        + cand.get("IMAGE", 0) * i_out
        + (cand.get("TEXT", 0) + meta.get("thoughtsTokenCount", 0)) * t_out
    )
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def _micro(usd: float) -> int:
    return round(usd * 1_000_000)


def _stream_usage(stack: Stack, secret: str) -> tuple[str, dict[str, Any]]:
    with httpx.stream(
        "POST",
        stack.url + "/v1/images/edits",
        headers={"authorization": f"Bearer {secret}"},
        data={"model": "gpt-image-1", "prompt": "stream it", "stream": "true",
              "partial_images": "1"},
        files={"image": ("a.png", PNG, "image/png")},
        timeout=60,
    ) as r:  # fmt: skip
        assert r.status_code == 200
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    completed = events[-1]
    assert completed["type"] == "image_edit.completed"
    return r.headers["x-request-id"], completed["usage"]


def test_cost_of_each_request_and_the_aggregates(stack: Stack) -> None:
    key = stack.create_key(credits=50, rpm=1000, max_concurrency=10)
    secret = key["key"]
    expected: dict[str, tuple[int, bool]] = {}  # trace id -> (micro-dollars, estimated)

    r = edit(stack, secret, "gpt-image-1", size="1024x1536", quality="low")
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["output_tokens_details"]["image_tokens"] == 408  # the simulator's low portrait
    expected[r.json()["trace_id"]] = (_openai_cost(usage), False)

    trace, stream_usage = _stream_usage(stack, secret)
    assert "output_tokens_details" not in stream_usage  # like OpenAI's ImagesUsage
    expected[trace] = (_openai_cost(stream_usage), False)

    gemini = edit(stack, secret, "nano-banana")
    assert gemini.status_code == 200, gemini.text
    gemini_trace = gemini.json()["trace_id"]

    for size, n, micro in (("256x256", "2", 32_000), ("512x512", "1", 18_000)):
        r = edit(stack, secret, "dall-e-2", size=size, n=n)
        assert r.status_code == 200, r.text
        expected[r.json()["trace_id"]] = (micro, False)  # billed per image: exact

    stack.fault(protocol="openai", kind="no_usage", times=1)
    r = edit(stack, secret, "gpt-image-1")
    assert r.status_code == 200 and "usage" not in r.json()
    expected[r.json()["trace_id"]] = (42_000, True)  # the per-image estimate, marked

    stack.fault(protocol="openai", kind="status", status=400, times=1, message="no")
    r = edit(stack, secret, "gpt-image-1")
    assert r.status_code == 400
    expected[r.json()["trace_id"]] = (0, True)  # nothing delivered, nothing reported

    with stack.admin() as admin:
        rows = admin.get("/admin/usage/records", params={"key_id": key["id"]}).json()["data"]
        by_trace = {row["trace_id"]: row for row in rows}
        meta = by_trace[gemini_trace]["usage"]
        assert {d["modality"] for d in meta["promptTokensDetails"]} == {"TEXT", "IMAGE"}
        expected[gemini_trace] = (_gemini_cost(meta), False)
        assert len(rows) == len(expected) == 7
        for trace, (micro, estimated) in expected.items():
            row = by_trace[trace]
            assert (_micro(row["cost_usd"]), row["cost_estimated"]) == (micro, estimated), row
            assert row["operation"] == "edit"
            assert row["channel"] == ("gemini" if row["model"] == "nano-banana" else "openai")
        assert by_trace[gemini_trace]["credits"] == 0.14  # credits beside cost, unchanged

        # every group-by agrees with the rows (aggregates, then a ledger scan)
        total = sum(m for m, _ in expected.values())
        since = time.time() - 3600.5
        for group_by, field in [("day", None), ("model", "model"), ("key", "key_id"),
                                ("channel", "channel"), ("operation", "operation")]:  # fmt: skip
            for extra in ({}, {"since": since}):
                params = {"key_id": key["id"], "group_by": group_by, **extra}
                groups = admin.get("/admin/usage", params=params).json()["data"]
                assert sum(_micro(g["cost_usd"]) for g in groups) == total
                assert sum(g["estimated"] for g in groups) == 2
                if field is None:
                    continue
                for g in groups:
                    mine = [row for row in rows if row[field] == g["group"]]
                    assert _micro(g["cost_usd"]) == sum(_micro(row["cost_usd"]) for row in mine)
                    assert g["requests"] == len(mine)
                    assert _micro(g["credits"]) == sum(_micro(row["credits"]) for row in mine)

        r = admin.get("/admin/usage/records", params={"key_id": key["id"], "format": "csv"})
        table = list(csv.DictReader(io.StringIO(r.text)))
        assert [c["trace_id"] for c in table] == [row["trace_id"] for row in rows]
        for c, row in zip(table, rows, strict=True):
            assert _micro(float(c["cost_usd"])) == _micro(row["cost_usd"])
            assert c["cost_estimated"] == str(row["cost_estimated"])
            assert (json.loads(c["usage"]) if c["usage"] else None) == row["usage"]
            assert (c["channel"], c["operation"]) == (row["channel"], row["operation"])

        one = admin.get(
            "/admin/usage/records", params={"key_id": key["id"], "channel": "gemini"}
        ).json()["data"]
        assert [row["trace_id"] for row in one] == [gemini_trace]

    me = httpx.get(stack.url + "/v1/me", headers={"authorization": f"Bearer {secret}"}).json()
    assert _micro(me["usage_totals"]["cost_usd"]) == total
    assert me["usage_totals"]["requests"] == 7
    assert {_micro(r["cost_usd"]) for r in me["recent_usage"]} == {m for m, _ in expected.values()}
