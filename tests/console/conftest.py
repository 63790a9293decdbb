"""Browser tests of the web console: Debian's Chromium driven by Playwright for Python, against a
real gateway and simulator over HTTP on 127.0.0.1.

One browser and one gateway stack per module (`browser`, `cstack`). Every page a
test opens is watched (`Watched`): a console error, an uncaught exception or a request to any
host but the gateway's fails the test. Screenshots go to $IMAGEGATE_SCREENSHOTS (default: a
temp dir, printed at the end).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from app.core.config import CallbacksConfig, TasksConfig
from tests.e2e.conftest import ADMIN_KEY, Stack, start_stack
from tests.support import images

CHROMIUM = Path("/usr/bin/chromium")
sync_api = pytest.importorskip("playwright.sync_api")
if not CHROMIUM.exists():
    pytest.skip("Debian chromium (/usr/bin/chromium) is not installed", allow_module_level=True)

SHOTS = Path(
    os.environ.get("IMAGEGATE_SCREENSHOTS") or Path(tempfile.gettempdir()) / "imagegate-console"
)
PNG = images.png(64, 64)
expect = sync_api.expect


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium for the module. Module, not session, scope: Playwright's sync API keeps its
    event loop marked as running while it is open, which the asyncio tests after it cannot share."""
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless=new", "--no-sandbox"]
        )
        try:
            yield b
        finally:
            b.close()
    print(f"\nconsole screenshots: {SHOTS}")


@pytest.fixture(scope="module")
def cstack() -> Iterator[Stack]:
    s = start_stack(
        allow_private=True,
        callbacks=CallbacksConfig(
            max_attempts=1, backoff_base_s=0.1, backoff_max_s=0.2, timeout_s=2
        ),
        tasks=TasksConfig(workers=2, lease_s=30),
    )
    try:
        yield s
    finally:
        s.gateway.stop()
        s.sim.stop()


@dataclass
class Watched:
    """A page whose console errors and off-host requests are collected."""

    page: Any
    host: str
    errors: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)

    def check(self) -> None:
        assert self.errors == [], self.errors
        assert self.foreign == [], self.foreign

    def shot(self, name: str, *, full_page: bool = True) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path


def watch(page: Any, base_url: str) -> Watched:
    w = Watched(page, urlsplit(base_url).netloc)

    def on_console(msg: Any) -> None:
        if msg.type == "error":
            w.errors.append(msg.text)

    def on_request(req: Any) -> None:
        parts = urlsplit(req.url)
        if parts.scheme not in ("data", "blob") and parts.netloc != w.host:
            w.foreign.append(req.url)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: w.errors.append(f"uncaught: {exc}"))
    page.on("request", on_request)
    return w


@pytest.fixture
def new_page(browser: Any, cstack: Stack) -> Iterator[Any]:
    """Opens watched pages in fresh browser contexts (own cookies); checks them at the end."""
    opened: list[tuple[Any, Watched]] = []

    def make(**context_args: Any) -> Watched:
        context = browser.new_context(base_url=cstack.url, **context_args)
        context.set_default_timeout(10_000)
        w = watch(context.new_page(), cstack.url)
        opened.append((context, w))
        return w

    yield make
    for context, w in opened:
        context.close()
        w.check()


def sign_in(w: Watched, secret: str = ADMIN_KEY, *, as_key: bool = False) -> None:
    w.page.goto("/console/login?as=key" if as_key else "/console/login")
    w.page.get_by_label("API key" if as_key else "Admin key").fill(secret)
    w.page.get_by_role("button", name="Sign in").click()
    w.page.wait_for_url("**/console/me" if as_key else "**/console")


def edit(stack: Stack, secret: str, *, model: str = "gpt-image-1", **data: str) -> httpx.Response:
    """One real edit through the gateway (and the simulator)."""
    return httpx.post(
        stack.url + "/v1/images/edits",
        data={"model": model, "prompt": "make it blue", **data},
        headers={"authorization": f"Bearer {secret}"},
        files={"image": ("a.png", PNG, "image/png")},
        timeout=30,
    )
