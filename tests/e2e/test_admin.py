"""The admin API and /v1/me over real HTTP, and the effect of each admin change on the edit
endpoint (a real gateway relaying to the simulator, embedded SQLite store)."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from app.api.views import RECORD_COLUMNS
from tests.e2e.conftest import ADMIN_KEY, Stack
from tests.support import images

PNG = images.png(64, 64)
SQUARE = images.png(256, 256, alpha=True)
SECRET_FIELDS = {"key", "key_hash", "webhook_secret"}


def edit(stack: Stack, secret: str, model: str = "nano-banana", **data: str) -> httpx.Response:
    image = SQUARE if model == "dall-e-2" else PNG
    return httpx.post(
        stack.url + "/v1/images/edits",
        headers={"authorization": f"Bearer {secret}"},
        data={"model": model, "prompt": "add a green leaf", **data},
        files={"image": ("a.png", image, "image/png")},
        timeout=60,
    )


def assert_error(r: httpx.Response, status: int, code: str, param: str | None = None) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["success"] is False and set(body) == {"success", "error", "trace_id"}
    assert set(body["error"]) == {"code", "message", "type", "param"}
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    assert body["trace_id"] and r.headers["x-request-id"] == body["trace_id"]
    if param is not None:
        assert body["error"]["param"] == param, body


@pytest.fixture
def admin(stack: Stack) -> Iterator[httpx.Client]:
    with stack.admin() as c:
        yield c


# --- admin auth -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong-admin-key"},
        {"authorization": ADMIN_KEY},
        {"authorization": f"Basic {ADMIN_KEY}"},
        {"authorization": "Bearer"},
    ],
)
def test_admin_requires_the_admin_key(stack: Stack, headers: dict[str, str]) -> None:
    for method, path in [
        ("GET", "/admin/keys"),
        ("POST", "/admin/keys"),
        ("GET", "/admin/usage"),
        ("GET", "/admin/usage/records"),
        ("DELETE", "/admin/keys/key_x"),
    ]:
        r = httpx.request(method, stack.url + path, headers=headers, json={"name": "x"})
        assert_error(r, 401, "invalid_token")
        assert r.json()["error"]["type"] == "authentication_error"


def test_an_api_key_is_not_an_admin_key(stack: Stack) -> None:
    key = stack.create_key(credits=1)
    r = httpx.get(stack.url + "/admin/keys", headers={"authorization": f"Bearer {key['key']}"})
    assert_error(r, 401, "invalid_token")
    # and the admin key is not an API key
    r = httpx.get(stack.url + "/v1/me", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert_error(r, 401, "invalid_token")


# --- create / list / show -------------------------------------------------------------------
def test_create_shows_the_secret_once(stack: Stack, admin: httpx.Client) -> None:
    r = admin.post(
        "/admin/keys",
        json={
            "name": "team-a",
            "credits": 2.5,
            "rpm": 30,
            "max_concurrency": 4,
            "models": ["nano-banana"],
            "expires_at": "2099-01-02T03:04:05Z",
        },
    )
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["key"].startswith("ig-") and len(new["key"]) > 30
    assert new["webhook_secret"].startswith("whsec_")
    assert new["id"].startswith("key_") and new["prefix"] == new["key"][:8]
    assert (new["name"], new["balance"], new["rpm"], new["max_concurrency"]) == (
        "team-a",
        2.5,
        30,
        4,
    )
    assert new["models"] == ["nano-banana"]
    assert new["expires_at"] == "2099-01-02T03:04:05Z"
    assert new["disabled"] is False and new["created_at"].endswith("Z")
    assert "key_hash" not in new

    one = admin.get(f"/admin/keys/{new['id']}")
    listing = admin.get("/admin/keys")
    for resp in (one, listing):
        assert resp.status_code == 200
        assert new["key"] not in resp.text and new["webhook_secret"] not in resp.text
        assert new["key"][8:] not in resp.text  # not even the part after the prefix
    shown = one.json()
    assert not SECRET_FIELDS & set(shown)
    assert shown == {k: v for k, v in new.items() if k not in SECRET_FIELDS}
    rows = listing.json()["data"]
    assert [k for k in rows if k["id"] == new["id"]] == [shown]
    assert all(not SECRET_FIELDS & set(k) for k in rows)

    # the secret works as an API key
    me = httpx.get(stack.url + "/v1/me", headers={"authorization": f"Bearer {new['key']}"})
    assert me.status_code == 200 and me.json()["id"] == new["id"]


def test_create_defaults(admin: httpx.Client) -> None:
    r = admin.post("/admin/keys", json={"name": "bare"})
    assert r.status_code == 201
    body = r.json()
    assert body["balance"] == 0 and body["rpm"] is None and body["max_concurrency"] is None
    assert body["models"] is None and body["expires_at"] is None and body["disabled"] is False


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"credits": 1}, "name"),
        ({"name": "", "credits": 1}, "name"),
        ({"name": "   ", "credits": 1}, "name"),
        ({"name": "x", "credits": -1}, "credits"),
        ({"name": "x", "credits": "-0.01"}, "credits"),
        ({"name": "x", "credits": "lots"}, "credits"),
        ({"name": "x", "credits": "NaN"}, "credits"),
        ({"name": "x", "credits": "1e400"}, "credits"),
        ({"name": "x", "credits": 1e20}, "credits"),
        ({"name": "x", "credits": True}, "credits"),
        ({"name": "x", "rpm": 0}, "rpm"),
        ({"name": "x", "rpm": -5}, "rpm"),
        ({"name": "x", "rpm": 2**70}, "rpm"),
        ({"name": "x", "max_concurrency": 0}, "max_concurrency"),
        ({"name": "x", "models": ["gpt-image-2", "dall-e-3"]}, "models"),
        ({"name": "x", "models": "nano-banana"}, "models"),
        ({"name": "x", "expires_at": "next tuesday"}, "expires_at"),
        ({"name": "x", "expires_at": "nan"}, "expires_at"),
        ({"name": "x", "expires_at": 1e300}, "expires_at"),
        ({"name": "x", "balance": 5}, "balance"),
        ({"name": "x", "key": "ig-chosen"}, "key"),
    ],
)
def test_create_validation(admin: httpx.Client, body: dict[str, Any], param: str) -> None:
    before = len(admin.get("/admin/keys").json()["data"])
    r = admin.post("/admin/keys", json=body)
    assert_error(r, 400, "bad_request", param)
    assert len(admin.get("/admin/keys").json()["data"]) == before


def test_create_unknown_model_names_it(admin: httpx.Client) -> None:
    r = admin.post("/admin/keys", json={"name": "x", "models": ["nano-banana", "dall-e-3"]})
    assert_error(r, 400, "bad_request", "models")
    assert "dall-e-3" in r.json()["error"]["message"]


def test_not_json_body(admin: httpx.Client) -> None:
    r = admin.post(
        "/admin/keys", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(r, 400, "bad_request")


def test_unknown_key_ids_are_404(admin: httpx.Client) -> None:
    for r in [
        admin.get("/admin/keys/key_nope"),
        admin.patch("/admin/keys/key_nope", json={"rpm": 5}),
        admin.delete("/admin/keys/key_nope"),
        admin.post("/admin/keys/key_nope/credits", json={"amount": 1}),
    ]:
        assert_error(r, 404, "not_found")
        assert "key_nope" in r.json()["error"]["message"]


# --- PATCH and its effect on the edit endpoint ----------------------------------------------
def test_patch_each_field(admin: httpx.Client) -> None:
    kid = admin.post("/admin/keys", json={"name": "p", "credits": 1}).json()["id"]

    def patch(**changes: Any) -> dict[str, Any]:
        r = admin.patch(f"/admin/keys/{kid}", json=changes)
        assert r.status_code == 200, r.text
        assert r.json() == admin.get(f"/admin/keys/{kid}").json()  # persisted
        assert not SECRET_FIELDS & set(r.json())
        return dict(r.json())

    assert patch(name="renamed")["name"] == "renamed"
    assert patch(rpm=7)["rpm"] == 7
    assert patch(max_concurrency=3)["max_concurrency"] == 3
    assert patch(models=["dall-e-2", "nano-banana"])["models"] == ["dall-e-2", "nano-banana"]
    assert patch(expires_at="2031-05-06T07:08:09Z")["expires_at"] == "2031-05-06T07:08:09Z"
    assert patch(expires_at="2031-05-06T09:08:09+02:00")["expires_at"] == "2031-05-06T07:08:09Z"
    assert patch(expires_at="2032-01-01")["expires_at"] == "2032-01-01T00:00:00Z"
    assert patch(expires_at=1_900_000_000)["expires_at"] == "2030-03-17T17:46:40Z"
    assert patch(expires_at="1900000000.5")["expires_at"] == "2030-03-17T17:46:40.500000Z"
    assert patch(disabled=True)["disabled"] is True
    assert patch(disabled=False)["disabled"] is False
    state = patch()  # an empty change set changes nothing
    assert (state["name"], state["rpm"], state["max_concurrency"]) == ("renamed", 7, 3)
    # null resets the optional fields to their defaults
    state = patch(rpm=None, max_concurrency=None, models=None, expires_at=None)
    assert (state["rpm"], state["max_concurrency"], state["models"], state["expires_at"]) == (
        None,
        None,
        None,
        None,
    )
    assert state["balance"] == 1 and state["name"] == "renamed"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"rpm": 0}, "rpm"),
        ({"max_concurrency": -1}, "max_concurrency"),
        ({"models": ["nope"]}, "models"),
        ({"expires_at": "soon"}, "expires_at"),
        ({"name": ""}, "name"),
        ({"name": None}, "name"),
        ({"disabled": None}, "disabled"),
        ({"disabled": "perhaps"}, "disabled"),
        ({"balance": 100}, "balance"),
        ({"credits": 100}, "credits"),
        ({"id": "key_other"}, "id"),
    ],
)
def test_patch_validation(admin: httpx.Client, body: dict[str, Any], param: str) -> None:
    key = admin.post("/admin/keys", json={"name": "v", "credits": 1}).json()
    r = admin.patch(f"/admin/keys/{key['id']}", json=body)
    assert_error(r, 400, "bad_request", param)
    unchanged = admin.get(f"/admin/keys/{key['id']}").json()
    assert unchanged == {k: v for k, v in key.items() if k not in SECRET_FIELDS}


def test_disable_and_enable_bite_on_the_next_request(stack: Stack, admin: httpx.Client) -> None:
    key = stack.create_key(credits=10, rpm=1000)
    assert edit(stack, key["key"]).status_code == 200
    admin.patch(f"/admin/keys/{key['id']}", json={"disabled": True})
    assert_error(edit(stack, key["key"]), 401, "invalid_token")
    me = httpx.get(stack.url + "/v1/me", headers={"authorization": f"Bearer {key['key']}"})
    assert_error(me, 401, "invalid_token")
    admin.patch(f"/admin/keys/{key['id']}", json={"disabled": False})
    assert edit(stack, key["key"]).status_code == 200
    assert stack.balance(key["id"]) == pytest.approx(10 - 2 * 0.14)


def test_expiry_in_the_past_is_401(stack: Stack, admin: httpx.Client) -> None:
    key = stack.create_key(credits=10, rpm=1000, expires_at=time.time() + 3600)
    assert edit(stack, key["key"]).status_code == 200
    past = datetime.fromtimestamp(time.time() - 60, UTC).isoformat()
    admin.patch(f"/admin/keys/{key['id']}", json={"expires_at": past})
    assert_error(edit(stack, key["key"]), 401, "invalid_token")
    admin.patch(f"/admin/keys/{key['id']}", json={"expires_at": int(time.time()) + 3600})
    assert edit(stack, key["key"]).status_code == 200
    admin.patch(f"/admin/keys/{key['id']}", json={"expires_at": int(time.time()) - 1})
    assert_error(edit(stack, key["key"]), 401, "invalid_token")


def test_key_created_expired_is_refused(stack: Stack) -> None:
    key = stack.create_key(credits=10, expires_at="2001-01-01T00:00:00Z")
    assert_error(edit(stack, key["key"]), 401, "invalid_token")


def test_models_restriction(stack: Stack, admin: httpx.Client) -> None:
    key = stack.create_key(credits=10, rpm=1000)
    assert edit(stack, key["key"], "gpt-image-1").status_code == 200
    admin.patch(f"/admin/keys/{key['id']}", json={"models": ["nano-banana"]})
    r = edit(stack, key["key"], "gpt-image-1")
    assert_error(r, 400, "token_mismatched", "model")
    assert "gpt-image-1" in r.json()["error"]["message"]
    assert edit(stack, key["key"], "nano-banana").status_code == 200
    admin.patch(f"/admin/keys/{key['id']}", json={"models": None})
    assert edit(stack, key["key"], "gpt-image-1").status_code == 200
    assert stack.balance(key["id"]) == pytest.approx(10 - 0.10 - 0.14 - 0.10)


def test_lowering_rpm_limits_sooner(stack: Stack, admin: httpx.Client) -> None:
    key = stack.create_key(credits=10, rpm=100)
    for _ in range(2):
        r = edit(stack, key["key"])
        assert r.status_code == 200 and r.headers["x-ratelimit-limit-requests"] == "100"
    admin.patch(f"/admin/keys/{key['id']}", json={"rpm": 2})
    r = edit(stack, key["key"])
    assert_error(r, 429, "too_many_requests")
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert r.headers["x-ratelimit-limit-requests"] == "2"
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    admin.patch(f"/admin/keys/{key['id']}", json={"rpm": 3})
    assert edit(stack, key["key"]).status_code == 200
    assert stack.balance(key["id"]) == pytest.approx(10 - 3 * 0.14)  # the 429 cost nothing


def test_delete(stack: Stack, admin: httpx.Client) -> None:
    key = stack.create_key(credits=10, rpm=1000)
    assert edit(stack, key["key"]).status_code == 200
    r = admin.delete(f"/admin/keys/{key['id']}")
    assert r.status_code == 200 and r.json() == {"id": key["id"], "deleted": True}
    assert_error(admin.get(f"/admin/keys/{key['id']}"), 404, "not_found")
    assert_error(admin.delete(f"/admin/keys/{key['id']}"), 404, "not_found")
    assert key["id"] not in [k["id"] for k in admin.get("/admin/keys").json()["data"]]
    assert_error(edit(stack, key["key"]), 401, "invalid_token")
    # its ledger stays
    rows = admin.get("/admin/usage/records", params={"key_id": key["id"]}).json()["data"]
    assert len(rows) == 1


# --- credits --------------------------------------------------------------------------------
def credits(admin: httpx.Client, key_id: str, amount: Any, **extra: Any) -> httpx.Response:
    return admin.post(f"/admin/keys/{key_id}/credits", json={"amount": amount, **extra})


def test_top_up_and_deduct(stack: Stack, admin: httpx.Client) -> None:
    kid = stack.create_key(credits=1)["id"]
    r = credits(admin, kid, 10, note="November top-up")
    assert r.status_code == 200 and r.json() == {"id": kid, "balance": 11}
    assert credits(admin, kid, "-2.5").json()["balance"] == 8.5
    assert credits(admin, kid, -8.5).json()["balance"] == 0
    assert stack.balance(kid) == 0


def test_deducting_below_zero_is_refused(stack: Stack, admin: httpx.Client) -> None:
    kid = stack.create_key(credits="0.5")["id"]
    r = credits(admin, kid, -0.500001)
    assert_error(r, 400, "bad_request", "amount")
    assert stack.balance(kid) == 0.5
    assert credits(admin, kid, -0.5).json()["balance"] == 0
    assert_error(credits(admin, kid, -0.000001), 400, "bad_request", "amount")


def test_credits_are_exact_decimals(stack: Stack, admin: httpx.Client) -> None:
    kid = stack.create_key(credits=0.1)["id"]
    assert credits(admin, kid, 0.2).json()["balance"] == 0.3  # not 0.30000000000000004
    assert stack.balance(kid) == 0.3
    kid = stack.create_key(credits=0)["id"]
    for _ in range(7):
        balance = credits(admin, kid, "0.14").json()["balance"]
    assert balance == 0.98
    r = admin.get(f"/admin/keys/{kid}")
    assert '"balance":0.98' in r.text.replace(" ", "")
    assert credits(admin, kid, -0.98).json()["balance"] == 0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "amount"),
        ({"amount": "ten"}, "amount"),
        ({"amount": None}, "amount"),
        ({"amount": True}, "amount"),
        ({"amount": "Infinity"}, "amount"),
        ({"amount": 1e12}, "amount"),
        ({"amount": 1, "memo": "x"}, "memo"),
    ],
)
def test_credits_validation(
    stack: Stack, admin: httpx.Client, body: dict[str, Any], param: str
) -> None:
    kid = stack.create_key(credits=1)["id"]
    r = admin.post(f"/admin/keys/{kid}/credits", json=body)
    assert_error(r, 400, "bad_request", param)
    assert stack.balance(kid) == 1


# --- usage ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def usage_key(stack: Stack) -> dict[str, Any]:
    """A key with a known history: 2 nano-banana, 1 gpt-image-2 (other tier), 1 dall-e-2 with
    n=2, and 1 failed nano-banana (upstream refused it)."""
    stack.clear_sim()
    key = stack.create_key(credits=10, rpm=1000, max_concurrency=10)
    responses = [
        edit(stack, key["key"], "nano-banana"),
        edit(stack, key["key"], "nano-banana"),
        edit(stack, key["key"], "gpt-image-2", size="1536x864"),
        edit(stack, key["key"], "dall-e-2", n="2", size="256x256"),
    ]
    assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
    stack.fault(protocol="gemini", kind="status", status=400, times=1, message="nope")
    failed = edit(stack, key["key"], "nano-banana")
    assert failed.status_code >= 400
    stack.clear_sim()
    key["trace_ids"] = [r.json()["trace_id"] for r in [*responses, failed]]
    return key


def _no_cost(group: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in group.items() if k not in ("cost_usd", "estimated")}


def test_usage_by_model(stack: Stack, admin: httpx.Client, usage_key: dict[str, Any]) -> None:
    r = admin.get("/admin/usage", params={"key_id": usage_key["id"], "group_by": "model"})
    assert r.status_code == 200
    body = r.json()
    assert body["group_by"] == "model"
    # upstream cost columns are checked in tests/e2e/test_cost.py
    groups = {g["group"]: _no_cost(g) for g in body["data"]}
    assert [g["group"] for g in body["data"]] == ["dall-e-2", "gpt-image-2", "nano-banana"]
    assert groups["nano-banana"] == {
        "group": "nano-banana",
        "requests": 3,
        "succeeded": 2,
        "failed": 1,
        "images": 2,
        "credits": 0.28,
    }
    assert groups["gpt-image-2"] == {
        "group": "gpt-image-2",
        "requests": 1,
        "succeeded": 1,
        "failed": 0,
        "images": 1,
        "credits": 0.3,
    }
    assert groups["dall-e-2"] == {
        "group": "dall-e-2",
        "requests": 1,
        "succeeded": 1,
        "failed": 0,
        "images": 2,
        "credits": 0.04,
    }
    assert stack.balance(usage_key["id"]) == 9.38  # 10 - 0.28 - 0.30 - 0.04, exactly


def test_usage_by_day_and_key(admin: httpx.Client, usage_key: dict[str, Any]) -> None:
    rows = admin.get("/admin/usage/records", params={"key_id": usage_key["id"]}).json()["data"]
    days = {r["created_at"][:10] for r in rows}
    r = admin.get("/admin/usage", params={"key_id": usage_key["id"], "group_by": "day"})
    data = r.json()["data"]
    assert {g["group"] for g in data} == days
    assert sum(g["requests"] for g in data) == 5
    assert sum(g["images"] for g in data) == 5
    assert round(sum(g["credits"] for g in data), 6) == 0.62
    r = admin.get("/admin/usage", params={"key_id": usage_key["id"], "group_by": "key"})
    assert [_no_cost(g) for g in r.json()["data"]] == [
        {
            "group": usage_key["id"],
            "requests": 5,
            "succeeded": 4,
            "failed": 1,
            "images": 5,
            "credits": 0.62,
        }
    ]
    # default grouping is by day
    assert admin.get("/admin/usage", params={"key_id": usage_key["id"]}).json()["group_by"] == "day"
    # unfiltered, by key: this key is one group among the others
    everyone = admin.get("/admin/usage", params={"group_by": "key"}).json()["data"]
    assert next(g for g in everyone if g["group"] == usage_key["id"])["requests"] == 5
    assert_error(
        admin.get("/admin/usage", params={"group_by": "week"}), 400, "bad_request", "group_by"
    )


def test_usage_filters(admin: httpx.Client, usage_key: dict[str, Any]) -> None:
    kid = usage_key["id"]

    def total(**params: Any) -> tuple[int, float]:
        r = admin.get("/admin/usage", params={"key_id": kid, "group_by": "key", **params})
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        return (data[0]["requests"], data[0]["credits"]) if data else (0, 0)

    assert total(model="nano-banana") == (3, 0.28)
    assert total(model="dall-e-2") == (1, 0.04)
    assert total(model="gpt-image-9") == (0, 0)
    now = time.time()
    assert total(since=now - 600) == (5, 0.62)
    assert total(since=datetime.fromtimestamp(now - 600, UTC).isoformat()) == (5, 0.62)
    assert total(since=int(now) + 60) == (0, 0)
    assert total(until=now - 600) == (0, 0)
    assert total(until=datetime.fromtimestamp(now + 600, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")) == (
        5,
        0.62,
    )
    # split between the second nano-banana and the gpt-image-2 request
    rows = admin.get("/admin/usage/records", params={"key_id": kid}).json()["data"]
    stamps = [datetime.fromisoformat(r["created_at"]).timestamp() for r in reversed(rows)]
    split = (stamps[1] + stamps[2]) / 2
    assert total(until=split) == (2, 0.28) and total(since=split) == (3, 0.34)
    assert total(since=split, until=stamps[-1] + 1, model="dall-e-2") == (1, 0.04)
    # other keys' usage is not counted under this key
    r = admin.get("/admin/usage", params={"key_id": "key_nobody", "group_by": "model"})
    assert r.json()["data"] == []
    assert_error(
        admin.get("/admin/usage", params={"since": "yesterday"}), 400, "bad_request", "since"
    )
    assert_error(
        admin.get("/admin/usage/records", params={"until": "nan"}), 400, "bad_request", "until"
    )


def test_usage_records_pagination(admin: httpx.Client, usage_key: dict[str, Any]) -> None:
    kid = usage_key["id"]
    full = admin.get("/admin/usage/records", params={"key_id": kid}).json()
    assert (full["limit"], full["offset"], full["next_offset"]) == (100, 0, None)
    rows = full["data"]
    assert len(rows) == 5
    assert {r["trace_id"] for r in rows} == set(usage_key["trace_ids"])
    assert [r["created_at"] for r in rows] == sorted((r["created_at"] for r in rows), reverse=True)
    assert set(rows[0]) == set(RECORD_COLUMNS)
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["credits"] == 0 and failed[0]["reserved"] == 0.14
    assert failed[0]["error_code"]
    gpt = next(r for r in rows if r["model"] == "gpt-image-2")
    assert (gpt["size_tier"], gpt["credits"], gpt["images"]) == ("other", 0.3, 1)

    pages, offset = [], 0
    while offset is not None:
        page = admin.get(
            "/admin/usage/records", params={"key_id": kid, "limit": 2, "offset": offset}
        ).json()
        assert page["limit"] == 2 and page["offset"] == offset and len(page["data"]) <= 2
        pages.append(page["data"])
        offset = page["next_offset"]
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [r for p in pages for r in p] == rows
    for bad in [{"limit": 0}, {"limit": 10_001}, {"offset": -1}, {"limit": "x"}]:
        assert_error(admin.get("/admin/usage/records", params=bad), 400, "bad_request")
    # An offset past 64 bits was a 500 on both stores (found by the property tests).
    for offset in [2**53, 2**63, 10**20]:
        r = admin.get("/admin/usage/records", params={"offset": offset})
        assert_error(r, 400, "bad_request", "offset")
    last = admin.get("/admin/usage/records", params={"offset": 2**53 - 1}).json()
    assert (last["data"], last["next_offset"]) == ([], None)
    assert_error(
        admin.get("/admin/usage/records", params={"format": "xml"}), 400, "bad_request", "format"
    )


def test_usage_records_csv(admin: httpx.Client, usage_key: dict[str, Any]) -> None:
    r = admin.get("/admin/usage/records", params={"key_id": usage_key["id"], "format": "csv"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    reader = csv.DictReader(io.StringIO(r.text))
    assert reader.fieldnames == RECORD_COLUMNS
    rows = list(reader)
    assert len(rows) == 5
    assert {row["trace_id"] for row in rows} == set(usage_key["trace_ids"])
    assert {row["key_id"] for row in rows} == {usage_key["id"]}
    assert sorted(row["model"] for row in rows) == [
        "dall-e-2",
        "gpt-image-2",
        "nano-banana",
        "nano-banana",
        "nano-banana",
    ]
    assert sum(int(row["images"]) for row in rows) == 5
    assert sum(round(float(row["credits"]) * 1_000_000) for row in rows) == 620_000
    assert sorted(row["status"] for row in rows) == ["failed"] + ["succeeded"] * 4
    paged = admin.get(
        "/admin/usage/records", params={"key_id": usage_key["id"], "format": "csv", "limit": 2}
    )
    assert len(list(csv.DictReader(io.StringIO(paged.text)))) == 2
    empty = admin.get("/admin/usage/records", params={"key_id": "key_nobody", "format": "csv"})
    assert empty.text.strip() == ",".join(RECORD_COLUMNS)


# --- /v1/me ---------------------------------------------------------------------------------
def test_me_shows_only_its_own_state(stack: Stack, usage_key: dict[str, Any]) -> None:
    other = stack.create_key(credits=5, rpm=1000)
    assert edit(stack, other["key"]).status_code == 200
    r = httpx.get(stack.url + "/v1/me", headers={"authorization": f"Bearer {usage_key['key']}"})
    assert r.status_code == 200
    me = r.json()
    assert me["id"] == usage_key["id"] and me["balance"] == 9.38
    assert me["rpm"] == 1000 and me["max_concurrency"] == 10
    assert not SECRET_FIELDS & set(me)
    assert usage_key["key"] not in r.text and usage_key["webhook_secret"] not in r.text
    recent = me["recent_usage"]
    assert len(recent) == 5 and {u["key_id"] for u in recent} == {usage_key["id"]}
    assert {u["trace_id"] for u in recent} == set(usage_key["trace_ids"])

    r = httpx.get(stack.url + "/v1/me", headers={"authorization": f"Bearer {other['key']}"})
    mine = r.json()
    assert mine["id"] == other["id"] and mine["balance"] == 4.86
    assert [u["key_id"] for u in mine["recent_usage"]] == [other["id"]]


def test_me_reports_config_defaults(stack: Stack) -> None:
    key = stack.create_key(credits=1)
    me = httpx.get(stack.url + "/v1/me", headers={"authorization": f"Bearer {key['key']}"}).json()
    assert me["rpm"] == stack.config.defaults.rpm
    assert me["max_concurrency"] == stack.config.defaults.max_concurrency
    assert me["recent_usage"] == [] and me["balance"] == 1


def test_me_without_a_valid_key(stack: Stack) -> None:
    for headers in [{}, {"authorization": "Bearer ig-not-a-key"}, {"authorization": "ig-x"}]:
        assert_error(httpx.get(stack.url + "/v1/me", headers=headers), 401, "invalid_token")
