"""Property-based tests (hypothesis) through a real gateway over real HTTP: whatever a client
sends to the edit endpoint (multipart or JSON) and whatever an operator sends to the admin API,
on either store,
the answer is a success or a 4xx in the error envelope, never a 5xx; and credits move only with
a ledger row that says so, never on a 4xx.

Example counts are bounded (HYPOTHESIS_EXAMPLES, default 40 per test) so the module stays
within seconds; the example database is off (nothing is written to the worktree).
Run longer with e.g. `HYPOTHESIS_EXAMPLES=2000 pytest tests/e2e/test_properties.py`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st

from tests.e2e.conftest import Stack, running_stack
from tests.support import strategies as gen
from tests.support.redis_server import RedisServer

EXAMPLES = int(os.environ.get("HYPOTHESIS_EXAMPLES", "40"))
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],  # no example database, no explain
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
EDITS = ["/v1/openai/images/edits", "/v1/images/edits"]
JSON = "application/json"


def check_answer(r: httpx.Response) -> None:
    """A success, or a 4xx in the one error envelope; never a 5xx."""
    event(f"HTTP {r.status_code}")
    assert r.status_code < 500, f"{r.status_code}: {r.text[:800]}"
    assert r.headers.get("x-request-id")
    if r.status_code < 400:
        return
    body = r.json()
    assert set(body) == {"success", "error", "trace_id"}, body
    assert body["success"] is False
    assert set(body["error"]) == {"code", "message", "type", "param"}, body
    assert body["error"]["code"] and body["error"]["message"], body
    assert body["trace_id"] == r.headers["x-request-id"]


def send_json(client: httpx.Client, method: str, path: str, body: Any) -> httpx.Response:
    """`body` as JSON text, with NaN and Infinity written the way Python's json does: not JSON,
    so the gateway must refuse them as a malformed body."""
    content = json.dumps(body).encode()
    return client.request(method, path, content=content, headers={"content-type": JSON})


def micro(value: Any) -> int:
    return round(float(value) * 1_000_000)


class Account:
    """A key's balance and ledger as the store keeps them, read through the admin API."""

    def __init__(self, admin: httpx.Client, key_id: str) -> None:
        self.admin = admin
        self.key_id = key_id

    def snapshot(self) -> tuple[int, list[dict[str, Any]]]:
        key = self.admin.get(f"/admin/keys/{self.key_id}")
        rows = self.admin.get(
            "/admin/usage/records", params={"key_id": self.key_id, "limit": 10_000}
        )
        assert key.status_code == 200 and rows.status_code == 200
        return micro(key.json()["balance"]), rows.json()["data"]

    def check_moved(self, before: tuple[int, list[dict[str, Any]]], status: int) -> None:
        """Every credit that moved is in a new ledger row; none moved on a 4xx."""
        balance, rows = self.snapshot()
        new_rows = rows[: len(rows) - len(before[1])]
        charged = sum(micro(row["credits"]) for row in new_rows)
        assert before[0] - balance == charged, (before[0], balance, new_rows)
        if status >= 400:
            assert charged == 0, new_rows


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def stack(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[Stack]:
    """The gateway on each store: the properties are about the store's answers too."""
    redis_url = None
    if request.param == "redis":
        redis_server.flushall()
        redis_url = redis_server.url
    with running_stack(redis_url=redis_url) as s:
        yield s


@pytest.fixture(scope="module")
def admin(stack: Stack) -> Iterator[httpx.Client]:
    with stack.admin() as client:
        yield client


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def payer(stack: Stack, admin: httpx.Client) -> tuple[str, Account]:
    key = stack.create_key(credits=100_000, rpm=1_000_000, max_concurrency=50)
    return key["key"], Account(admin, key["id"])


# --------------------------------------------------------------------------- edit bodies


def edit_once(
    client: httpx.Client,
    payer: tuple[str, Account],
    path: str,
    content_type: str,
    raw: bytes,
    idem: str | None,
) -> None:
    """Send one edit body; check the answer and what it did to the payer's credits."""
    secret, account = payer
    headers = {"authorization": f"Bearer {secret}", "content-type": content_type}
    if idem is not None:
        headers["idempotency-key"] = idem
    before = account.snapshot()
    r = client.post(path, content=raw, headers=headers)
    check_answer(r)
    account.check_moved(before, r.status_code)


@PROPERTY
@given(body=gen.multipart_bodies(), path=st.sampled_from(EDITS), idem=gen.idempotency_keys)
def test_any_multipart_body(
    client: httpx.Client,
    payer: tuple[str, Account],
    body: tuple[str, bytes],
    path: str,
    idem: str | None,
) -> None:
    edit_once(client, payer, path, body[0], body[1], idem)


@PROPERTY
@given(raw=gen.json_bodies(), path=st.sampled_from(EDITS), idem=gen.idempotency_keys)
def test_any_json_body(
    client: httpx.Client, payer: tuple[str, Account], raw: bytes, path: str, idem: str | None
) -> None:
    edit_once(client, payer, path, JSON, raw, idem)


# --------------------------------------------------------------------------- admin bodies


@pytest.fixture(scope="module")
def target(stack: Stack, admin: httpx.Client) -> Account:
    """A key the admin tests change; its balance moves only through the credits endpoint."""
    return Account(admin, stack.create_key(credits=10)["id"])


@PROPERTY
@given(body=gen.admin_body(["name", "credits", "rpm", "max_concurrency", "models", "expires_at"]))
def test_any_key_create_body(admin: httpx.Client, body: Any) -> None:
    count = len(admin.get("/admin/keys").json()["data"])
    r = send_json(admin, "POST", "/admin/keys", body)
    check_answer(r)
    keys = admin.get("/admin/keys").json()["data"]
    if r.status_code >= 400:
        assert len(keys) == count
        return
    assert r.status_code == 201 and len(keys) == count + 1
    created = r.json()
    shown = admin.get(f"/admin/keys/{created['id']}").json()
    assert micro(shown["balance"]) == micro(created["balance"])
    assert shown == {k: v for k, v in created.items() if k not in ("key", "webhook_secret")}


@PROPERTY
@given(body=gen.admin_body(["name", "rpm", "max_concurrency", "models", "expires_at", "disabled"]))
def test_any_key_update_body(admin: httpx.Client, target: Account, body: Any) -> None:
    before = admin.get(f"/admin/keys/{target.key_id}").json()
    ledger = target.snapshot()
    r = send_json(admin, "PATCH", f"/admin/keys/{target.key_id}", body)
    check_answer(r)
    after = admin.get(f"/admin/keys/{target.key_id}").json()
    target.check_moved(ledger, 400)  # a PATCH never moves credits
    if r.status_code >= 400:
        assert after == before
    else:
        assert r.json() == after


@PROPERTY
@given(
    body=gen.admin_body(["amount", "note"]),
    key_id=st.sampled_from([None, None, None, "key_nope"]) | st.text(max_size=12),
)
def test_any_credits_body(
    admin: httpx.Client, target: Account, body: Any, key_id: str | None
) -> None:
    before = target.snapshot()
    path_id = target.key_id if key_id is None else quote(key_id, safe="")
    r = send_json(admin, "POST", f"/admin/keys/{path_id}/credits", body)
    check_answer(r)
    balance, _ = target.snapshot()
    if r.status_code >= 400 or key_id is not None:
        assert balance == before[0]
    else:
        assert r.status_code == 200 and micro(r.json()["balance"]) == balance


@PROPERTY
@example(query={"offset": "99999999999999999999"}, path="/admin/usage/records")  # was a 500
@given(
    query=gen.usage_queries(),
    path=st.sampled_from(["/admin/usage", "/admin/usage/records"]),
)
def test_any_usage_query(admin: httpx.Client, query: dict[str, str], path: str) -> None:
    r = admin.get(path, params=query)
    check_answer(r)
