"""The web console in a real browser: sign-in, every page, and each change it makes through the
admin API, checked against the API and the ledger."""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest

from app.console import pages, sessions
from tests.console.conftest import Watched, edit, expect, sign_in
from tests.e2e.conftest import ADMIN_KEY, Stack
from tests.support.receiver import receiver

NAV = ["Overview", "Keys", "Usage", "Records", "Tasks", "Channels", "Audit"]
PHONE = {"width": 390, "height": 844}


def wait_until(fn: Callable[[], Any], timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def me(stack: Stack, secret: str) -> httpx.Response:
    return httpx.get(stack.url + "/v1/me", headers={"authorization": f"Bearer {secret}"})


def session_cookie(w: Watched) -> dict[str, Any]:
    (cookie,) = [c for c in w.page.context.cookies() if c["name"] == sessions.COOKIE]
    return dict(cookie)


def traffic(stack: Stack) -> dict[str, Any]:
    """A key with three good edits on two models and one the upstream refused."""
    key = stack.create_key(credits=100, rpm=10_000, max_concurrency=50)
    for model in ("gpt-image-1", "gpt-image-1", "gpt-image-1-mini"):
        assert edit(stack, key["key"], model=model).status_code == 200
    stack.fault(protocol="openai", kind="status", status=400, times=1, message="bad image")
    assert edit(stack, key["key"]).status_code == 400
    return key


# --- sign-in


def test_sign_in_refuses_a_wrong_key_and_sets_a_strict_expiring_cookie(
    new_page: Callable[..., Watched], cstack: Stack
) -> None:
    w = new_page()
    w.page.goto("/console")
    w.page.get_by_label("Admin key").fill("not-the-admin-key")
    w.page.get_by_role("button", name="Sign in").click()
    assert "not valid" in w.page.get_by_role("alert").inner_text()
    assert w.page.context.cookies() == []

    sign_in(w)
    cookie = session_cookie(w)
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert time.time() + 3600 < cookie["expires"] <= time.time() + sessions.SESSION_TTL_S + 5
    assert w.page.get_by_role("heading", name="Overview").is_visible()

    # the cookie works for the admin API (reads) ... until "Sign out" ends the session
    jar = {sessions.COOKIE: cookie["value"]}
    assert httpx.get(cstack.url + "/admin/keys", cookies=jar).status_code == 200
    w.page.get_by_role("button", name="Sign out").click()
    w.page.wait_for_url("**/console/login")
    assert w.page.get_by_label("Admin key").is_visible()
    assert httpx.get(cstack.url + "/admin/keys", cookies=jar).status_code == 401
    w.page.goto("/console/keys")  # signed out: back to the sign-in form
    assert w.page.get_by_role("button", name="Sign in").is_visible()


def test_keyboard_only_sign_in_and_navigation(new_page: Callable[..., Watched]) -> None:
    w = new_page()
    w.page.goto("/console/login")
    for _ in range(6):
        if w.page.evaluate("document.activeElement && document.activeElement.id") == "secret":
            break
        w.page.keyboard.press("Tab")
    w.page.keyboard.type(ADMIN_KEY)
    w.page.keyboard.press("Enter")
    w.page.wait_for_url("**/console")
    for _ in range(12):
        w.page.keyboard.press("Tab")
        if w.page.evaluate("document.activeElement.textContent") == "Keys":
            break
    w.page.keyboard.press("Enter")
    w.page.wait_for_url("**/console/keys")
    w.page.keyboard.press("Tab")  # the skip link comes first and is visible when focused
    assert w.page.evaluate("document.activeElement.textContent") == "Skip to content"


def test_cookie_changes_need_the_csrf_token_and_our_origin(cstack: Stack) -> None:
    key = cstack.create_key(credits=1)
    origin = cstack.url
    with httpx.Client(base_url=cstack.url) as c:
        # a sign-in posted from another site is refused
        r = c.post(
            "/console/login", data={"secret": ADMIN_KEY}, headers={"origin": "http://evil.test"}
        )
        assert r.status_code == 403 and sessions.COOKIE not in c.cookies
        r = c.post("/console/login", data={"secret": ADMIN_KEY}, headers={"origin": origin})
        assert r.status_code == 303 and sessions.COOKIE in c.cookies
        token = re.search(r'name="csrf-token" content="([^"]+)"', c.get("/console/keys").text)
        assert token is not None
        url = f"/admin/keys/{key['id']}"
        body = {"rpm": 5}
        assert c.patch(url, json=body, headers={"origin": origin}).status_code == 401
        bad = {"origin": "http://evil.test", "x-csrf-token": token[1]}
        assert c.patch(url, json=body, headers=bad).status_code == 401
        assert c.patch(url, json=body, headers={"x-csrf-token": token[1]}).status_code == 401
        good = {"origin": origin, "x-csrf-token": token[1]}
        assert c.patch(url, json=body, headers=good).json()["rpm"] == 5


# --- pages


def test_every_page_renders_without_errors_or_foreign_requests(
    new_page: Callable[..., Watched], cstack: Stack
) -> None:
    key = traffic(cstack)
    w = new_page(viewport={"width": 1280, "height": 900})
    sign_in(w)
    for name in NAV:
        w.page.get_by_role("link", name=name, exact=True).click()
        w.page.wait_for_load_state("networkidle")
        assert w.page.get_by_role("heading", level=1).inner_text() == name
        assert (
            w.page.get_by_role("link", name=name, exact=True).get_attribute("aria-current")
            == "page"
        )
        w.shot(f"desktop-{name.lower()}")
    w.page.get_by_role("link", name="Overview", exact=True).click()
    points = w.page.locator('[data-chart="requests"]').get_attribute("data-points")
    assert points is not None and int(points) >= 1
    assert key["id"] in w.page.get_by_role("region", name="Top keys").inner_text()
    w.page.goto("/docs")
    w.page.get_by_text("/v1/images/edits", exact=True).first.wait_for()
    w.shot("docs", full_page=False)

    dark = new_page(color_scheme="dark", viewport={"width": 1280, "height": 900})
    sign_in(dark)
    dark.page.wait_for_load_state("networkidle")
    dark.shot("desktop-overview-dark")
    bg = dark.page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert bg == "rgb(15, 18, 22)"


def test_phone_width_has_no_horizontal_scroll(new_page: Callable[..., Watched]) -> None:
    w = new_page(viewport=PHONE, is_mobile=True, has_touch=True, color_scheme="dark")
    w.page.goto("/console")
    w.shot("phone-sign-in")
    sign_in(w)
    for name in NAV:
        w.page.get_by_role("link", name=name, exact=True).click()
        w.page.wait_for_load_state("networkidle")
        width = w.page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], (name, width)
        w.shot(f"phone-{name.lower()}")


# --- keys


def test_create_key_add_credits_edit_limits_disable_and_revoke(
    new_page: Callable[..., Watched], cstack: Stack
) -> None:
    w = new_page()
    sign_in(w)
    page = w.page
    page.get_by_role("link", name="Keys", exact=True).click()
    page.get_by_role("button", name="Create key").click()
    dialog = page.get_by_role("dialog", name="Create key")
    dialog.get_by_label("Name").fill("console-made")
    dialog.get_by_label("Credits").fill("5")
    dialog.get_by_label("RPM").fill("30")
    dialog.get_by_role("button", name="Create").click()
    shown = page.get_by_role("dialog", name="New key")
    secret = shown.get_by_label("Key").input_value()
    w.shot("desktop-keys-created")
    shown.get_by_role("button", name="Copy").click()
    expect(shown.get_by_role("status")).to_contain_text("Copied")
    # the key shown once works against the API
    mine = me(cstack, secret)
    assert mine.status_code == 200 and mine.json()["balance"] == 5 and mine.json()["rpm"] == 30
    key_id = mine.json()["id"]
    shown.get_by_role("button", name="Done").click()
    row = page.locator(f'tr[data-key-id="{key_id}"]')
    assert "console-made" in row.inner_text()
    assert secret not in page.content()  # never shown again

    row.get_by_role("button", name="Add credits to console-made").click()
    dialog = page.get_by_role("dialog", name=re.compile("Add credits"))
    dialog.get_by_label("Amount").fill("2.5")
    dialog.get_by_label("Note").fill("from the console")
    dialog.get_by_role("button", name="Add credits").click()
    expect(row.locator(".balance")).to_have_text("7.5")
    assert cstack.balance(key_id) == 7.5

    # the admin API's validation answers in the dialog; nothing changes
    row.get_by_role("button", name="Add credits to console-made").click()
    dialog.get_by_label("Amount").fill("-100")
    with page.expect_response(re.compile(r"/credits$")) as resp:
        dialog.get_by_role("button", name="Add credits").click()
    assert resp.value.status == 400
    assert dialog.get_by_role("alert").inner_text() != ""
    w.errors.clear()  # the refused call is a logged 400, on purpose
    dialog.get_by_role("button", name="Cancel").click()
    assert cstack.balance(key_id) == 7.5

    row.get_by_role("button", name="Edit limits of console-made").click()
    dialog = page.get_by_role("dialog", name=re.compile("Edit limits"))
    assert dialog.get_by_label("RPM").input_value() == "30"
    dialog.get_by_label("RPM").fill("12")
    dialog.get_by_label("Concurrency").fill("3")
    dialog.get_by_label("gpt-image-1", exact=True).check()
    dialog.get_by_role("button", name="Save").click()
    expect(row.locator("td").nth(2)).to_have_text("12")
    got = me(cstack, secret).json()
    assert (got["rpm"], got["max_concurrency"], got["models"]) == (12, 3, ["gpt-image-1"])

    row.get_by_role("button", name="Disable console-made").click()
    row.get_by_role("button", name="Enable console-made").wait_for()
    assert "disabled" in row.inner_text()
    assert edit(cstack, secret).status_code == 401
    row.get_by_role("button", name="Enable console-made").click()
    row.get_by_role("button", name="Disable console-made").wait_for()

    page.once("dialog", lambda d: d.dismiss())  # "Cancel" in the confirmation keeps the key
    row.get_by_role("button", name="Revoke console-made").click()
    assert me(cstack, secret).status_code == 200
    page.once("dialog", lambda d: d.accept())
    row.get_by_role("button", name="Revoke console-made").click()
    row.wait_for(state="detached")
    assert me(cstack, secret).status_code == 401

    # each change is in the audit log, as the admin acting from the console
    page.get_by_role("link", name="Audit", exact=True).click()
    page.get_by_label("Source").select_option("console")
    page.get_by_label("Target").fill(key_id)
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(re.compile("source=console"))
    rows = page.locator("#results tbody tr").all_inner_texts()
    actions = [a for r in rows for a in re.findall(r"key\.\w+", r)]
    assert actions == ["key.revoke", "key.update", "key.update", "key.update", "key.credits",
                       "key.create"]  # fmt: skip
    assert all("admin" in r and "127.0.0.1" in r for r in rows)
    assert secret not in page.content()
    w.shot("desktop-audit")


# --- usage, records


def test_usage_chart_table_and_csv_match_the_ledger(
    new_page: Callable[..., Watched], cstack: Stack
) -> None:
    key = traffic(cstack)
    w = new_page()
    sign_in(w)
    page = w.page
    page.goto(f"/console/usage?key_id={key['id']}")
    points = page.locator('[data-chart="requests"]').get_attribute("data-points")
    assert points == "1"  # today
    ledger = httpx.get(
        cstack.url + "/admin/usage/records",
        params={"key_id": key["id"]},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    ).json()["data"]
    assert len(ledger) == 4
    total = page.locator("tfoot td").all_inner_texts()
    credits = sum(Decimal(str(r["credits"])) for r in ledger)
    cost = sum(Decimal(str(r["cost_usd"])) for r in ledger)
    assert cost > 0
    assert total[0] == "4" and total[1:3] == ["3", "1"]
    assert total[4] == f"{credits:f}".rstrip("0")
    assert total[5] == "$" + f"{cost:f}".rstrip("0").rstrip(".")

    page.get_by_label("Group by").select_option("model")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(re.compile("group_by=model"))
    rows = page.locator("#results tbody tr").all_inner_texts()
    assert sorted(r.split()[0] for r in rows) == ["gpt-image-1", "gpt-image-1-mini"]
    w.shot("desktop-usage-by-model")
    page.get_by_label("Group by").select_option("channel")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(re.compile("group_by=channel"))
    rows = page.locator("#results tbody tr").all_inner_texts()
    assert [r.split()[:2] for r in rows] == [["openai", "4"]]

    with page.expect_download() as dl:
        page.get_by_role("link", name="Export CSV").click()
    text = open(dl.value.path()).read()  # noqa: SIM115 -- the download's own temp file
    got = list(csv.DictReader(io.StringIO(text)))
    assert [r["trace_id"] for r in got] == [r["trace_id"] for r in ledger]
    assert [float(r["credits"]) for r in got] == [r["credits"] for r in ledger]
    assert [float(r["cost_usd"]) for r in got] == [r["cost_usd"] for r in ledger]
    assert sorted(r["status"] for r in got) == ["failed", "succeeded", "succeeded", "succeeded"]


def test_records_filter_and_paginate(
    new_page: Callable[..., Watched], cstack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = traffic(cstack)
    monkeypatch.setattr(pages, "PAGE", 2)  # the gateway runs in this process
    w = new_page()
    sign_in(w)
    page = w.page
    page.get_by_role("link", name="Records", exact=True).click()
    page.get_by_label("Key").select_option(key["id"])
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(re.compile(f"key_id={key['id']}"))
    assert page.locator("#results tbody tr").count() == 2
    page.get_by_role("link", name="Next page").click()
    page.wait_for_url(re.compile("page=2"))
    assert page.locator("#results tbody tr").count() == 2
    assert page.get_by_role("link", name="Next page").count() == 0
    page.get_by_role("link", name="Previous page").click()
    page.wait_for_url(re.compile("page=1"))

    page.get_by_label("Status").select_option("failed")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(re.compile("status=failed"))
    rows = page.locator("#results tbody tr")
    assert rows.count() == 1 and "failed" in rows.inner_text()
    w.shot("desktop-records-failed")

    page.get_by_label("Status").select_option("")
    page.get_by_label("Model").select_option("gpt-image-1-mini")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(re.compile("model=gpt-image-1-mini"))
    assert page.locator("#results tbody tr").count() == 1
    today = time.strftime("%Y-%m-%d", time.gmtime())
    page.goto(f"/console/records?key_id={key['id']}&since=2000-01-01&until=2000-01-02")
    assert "No records match" in page.locator("#results").inner_text()
    page.goto(f"/console/records?key_id={key['id']}&since={today}&until={today}")
    assert page.locator("#results tbody tr").count() == 2


def test_records_show_and_filter_the_operation(
    new_page: Callable[..., Watched], cstack: Stack
) -> None:
    key = cstack.create_key(credits=10, rpm=10_000)
    assert edit(cstack, key["key"]).status_code == 200
    r = httpx.post(
        cstack.url + "/v1/images/generations",
        json={"model": "gpt-image-1", "prompt": "new"},
        headers={"authorization": f"Bearer {key['key']}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    w = new_page()
    sign_in(w)
    page = w.page
    page.goto(f"/console/records?key_id={key['id']}")
    cells = page.locator('#results tbody td[data-label="Operation"]').all_inner_texts()
    assert sorted(cells) == ["edit", "generate"]
    page.get_by_label("Operation").select_option("generate")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(re.compile("operation=generate"))
    cells = page.locator('#results tbody td[data-label="Operation"]').all_inner_texts()
    assert cells == ["generate"]


# --- tasks


def test_task_detail_and_redeliver(new_page: Callable[..., Watched], cstack: Stack) -> None:
    key = cstack.create_key(credits=10)
    with receiver(answers=[500]) as rx:
        r = edit(cstack, key["key"], callback_url=rx.url)
        assert r.status_code == 200, r.text
        task_id = r.json()["task_id"]

        def state() -> str | None:
            got = httpx.get(
                f"{cstack.url}/v1/tasks/{task_id}",
                headers={"authorization": f"Bearer {key['key']}"},
            ).json()
            return got["callback"]["state"] if got["callback"]["state"] != "pending" else None

        assert wait_until(state) == "undelivered"
        w = new_page()
        sign_in(w)
        page = w.page
        page.get_by_role("link", name="Tasks", exact=True).click()
        page.get_by_role("link", name=task_id[:20]).click()
        page.wait_for_url(f"**/console/tasks/{task_id}?key_id=*")
        text = page.locator("main").inner_text()
        assert "Timings" in text and "undelivered" in text and "HTTP 500" in text
        thumb = page.get_by_role("img", name="Result image 1")
        assert thumb.evaluate("img => img.complete && img.naturalWidth > 0")
        w.shot("desktop-task")
        page.get_by_role("button", name="Redeliver").click()  # the receiver answers 200 now
        rx.wait_for(2)
        expect(page.locator(".badge.delivered")).to_be_visible()
        assert page.get_by_role("button", name="Redeliver").count() == 0
        text = page.locator("main").inner_text()
        assert "HTTP 200" in text and re.search(r"Attempts\s+2", text)
        w.shot("desktop-task-redelivered")

    # a synchronous request's task, reached from its ledger row
    sync = edit(cstack, key["key"])
    assert sync.status_code == 200
    page.get_by_role("link", name="Records", exact=True).click()
    page.get_by_role("link", name=sync.json()["task_id"][:16]).click()
    text = page.locator("main").inner_text()
    assert "succeeded" in text and "Timings" in text and "No callback" in text
    assert page.get_by_role("img", name="Result image 1").count() == 1


# --- channels


def test_channels_page_lists_the_configured_upstreams(
    new_page: Callable[..., Watched], cstack: Stack
) -> None:
    w = new_page()
    sign_in(w)
    w.page.get_by_role("link", name="Channels", exact=True).click()
    table = w.page.locator("table").inner_text()
    for name in cstack.config.upstreams:
        assert name in table


def test_channel_disable_and_enable(new_page: Callable[..., Watched], cstack: Stack) -> None:
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    if "/admin/channels/{name}" not in httpx.get(cstack.url + "/openapi.json").json()["paths"]:
        pytest.skip("this build has no channel admin API")
    key = cstack.create_key(credits=10)
    w = new_page()
    sign_in(w)
    page = w.page
    page.get_by_role("link", name="Channels", exact=True).click()
    row = page.locator('tr[data-channel="openai"]')
    page.once("dialog", lambda d: d.accept())
    row.get_by_role("button", name="Disable openai").click()
    expect(row.locator(".badge").first).to_have_text("disabled")
    w.shot("desktop-channels-disabled")
    view = httpx.get(cstack.url + "/admin/channels", headers=admin).json()["data"]
    assert [c["state"] for c in view if c["name"] == "openai"] == ["disabled"]
    assert edit(cstack, key["key"]).status_code >= 500  # no channel left for gpt-image-1
    assert cstack.balance(key["id"]) == 10  # refused, nothing charged
    row.get_by_role("button", name="Enable openai").click()
    expect(row.locator(".badge").first).not_to_have_text("disabled")
    assert edit(cstack, key["key"]).status_code == 200
    audit = httpx.get(
        cstack.url + "/admin/audit", params={"target": "openai"}, headers=admin
    ).json()["data"]
    assert [(e["action"], e["source"]) for e in audit[:2]] == [
        ("channel.enable", "console"),
        ("channel.disable", "console"),
    ]


# --- an API key's own page


def test_api_key_sign_in_sees_only_its_own_page(
    new_page: Callable[..., Watched], cstack: Stack
) -> None:
    mine = traffic(cstack)
    other = cstack.create_key(credits=3)
    httpx.patch(
        f"{cstack.url}/admin/keys/{other['id']}",
        json={"name": "someone-else"},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    )
    w = new_page()
    w.page.goto("/console/login?as=key")
    w.page.get_by_label("API key").fill(other["key"] + "x")
    w.page.get_by_role("button", name="Sign in").click()
    assert "not valid" in w.page.get_by_role("alert").inner_text()
    sign_in(w, mine["key"], as_key=True)
    page = w.page
    text = page.locator("main").inner_text()
    balance = me(cstack, mine["key"]).json()["balance"]
    assert page.locator(".balance").inner_text() == f"{balance:g}"
    assert "someone-else" not in text and other["id"] not in page.content()
    assert page.get_by_role("region", name="Recent usage").locator("tbody tr").count() == 4
    assert page.get_by_role("region", name="Recent tasks").locator("tbody tr").count() == 4
    assert page.get_by_role("link", name="Keys").count() == 0
    w.shot("desktop-my-key")

    page.goto("/console/keys")  # admin pages send an API-key session to its own page
    page.wait_for_url("**/console/me")
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    jar = {sessions.COOKIE: session_cookie(w)["value"]}
    headers = {"x-csrf-token": token or "", "origin": cstack.url}
    assert httpx.get(cstack.url + "/admin/keys", cookies=jar).status_code == 401
    r = httpx.post(
        f"{cstack.url}/admin/keys/{mine['id']}/credits",
        json={"amount": 1000},
        cookies=jar,
        headers=headers,
    )
    assert r.status_code == 401
    assert me(cstack, mine["key"]).json()["balance"] == balance
