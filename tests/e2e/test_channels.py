"""Several upstream accounts: three simulators on real sockets behind one gateway.

Channels `a` (OpenAI, two keys, weight 3) and `b` (OpenAI, weight 1) share priority 0; `c` is an
Azure OpenAI deployment at priority 1. Each simulator is told to fail on its own; every test
counts the attempts each one saw and the credits that moved.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from app.api.app import create_app
from app.core.config import (
    ModelConfig,
    PriceConfig,
    RoutingConfig,
    Settings,
    UpstreamConfig,
)
from app.simulator import create_simulator_app
from tests.e2e.conftest import ADMIN_KEY, gateway_config
from tests.support import images
from tests.support.net import ThreadedServer

KEY_A1, KEY_A2 = "sk-a1-secret-0001", "sk-a2-secret-0002"
PRICE = 0.10


@dataclass
class Channels:
    sims: dict[str, ThreadedServer]
    gateway: ThreadedServer

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.gateway.url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
        )

    def fault(self, sim: str, **fault: Any) -> None:
        httpx.post(self.sims[sim].url + "/_sim/faults", json=fault).raise_for_status()

    def seen(self, sim: str) -> list[dict[str, Any]]:
        return list(httpx.get(self.sims[sim].url + "/_sim/requests").json())

    def statuses(self) -> dict[str, list[int | None]]:
        return {name: [r["status"] for r in self.seen(name)] for name in self.sims}

    def attempts(self) -> int:
        return sum(len(v) for v in self.statuses().values())

    def channel(self, name: str) -> dict[str, Any]:
        with self.admin() as c:
            data = c.get("/admin/channels").json()["data"]
        return next(ch for ch in data if ch["name"] == name)

    def drain(self, *names: str, disabled: bool = True) -> None:
        with self.admin() as c:
            for name in names:
                r = c.patch(f"/admin/channels/{name}", json={"disabled": disabled})
                assert r.status_code == 200, r.text

    def key(self, credits: float = 10) -> dict[str, Any]:
        with self.admin() as c:
            r = c.post("/admin/keys", json={"name": "t", "credits": credits, "rpm": 100_000,
                                            "max_concurrency": 100})  # fmt: skip
            assert r.status_code == 201, r.text
            return dict(r.json())

    def balance(self, key: dict[str, Any]) -> Decimal:
        with self.admin() as c:
            return Decimal(str(c.get(f"/admin/keys/{key['id']}").json()["balance"]))

    def edit(self, key: dict[str, Any], **data: Any) -> httpx.Response:
        return httpx.post(
            self.gateway.url + "/v1/images/edits",
            headers={"authorization": f"Bearer {key['key']}"},
            data={"model": "gpt-image-1", "prompt": "make it blue", **data},
            files={"image": ("a.png", images.png(), "image/png")},
            timeout=30,
        )


@pytest.fixture(scope="module")
def chans() -> Iterator[Channels]:
    sims = {n: ThreadedServer(create_simulator_app()).start() for n in ("a", "b", "c")}
    settings = Settings(
        data_dir=Path(tempfile.mkdtemp(prefix="imagegate-channels-")), admin_key=ADMIN_KEY
    )
    base = gateway_config(settings, sims["a"].url)
    common: dict[str, Any] = {"timeout_s": 1.0, "retries": 0, "backoff_s": 0.01}
    upstreams = {
        "a": UpstreamConfig(kind="openai", base_url=sims["a"].url + "/v1",
                            api_keys=[KEY_A1, KEY_A2], weight=3, **common),
        "b": UpstreamConfig(kind="openai", base_url=sims["b"].url + "/v1",
                            api_key="sk-b1-secret-0003", weight=1, **common),
        "c": UpstreamConfig(kind="azure-openai", base_url=sims["c"].url,
                            api_key="az-c1-secret-0004", api_version="2025-04-01-preview",
                            deployments={"gpt-image-1": "img-edit"}, priority=1, **common),
    }  # fmt: skip
    model = ModelConfig(
        adapter="gpt-image", upstreams=["a", "b", "c"], upstream_model="gpt-image-1",
        price=PriceConfig(per_image=PRICE),
    )  # fmt: skip
    config = base.model_copy(
        update={
            "upstreams": upstreams,
            "models": {"gpt-image-1": model},
            "default_model": "gpt-image-1",
            "routing": RoutingConfig(
                max_attempts=3, failure_threshold=2, cooldown_s=2, deadline_s=5
            ),
        }
    )
    gateway = ThreadedServer(create_app(settings, config)).start()
    try:
        yield Channels(sims, gateway)
    finally:
        gateway.stop()
        for s in sims.values():
            s.stop()


@pytest.fixture(autouse=True)
def _healthy(chans: Channels) -> None:
    """Every test starts with quiet simulators and every channel and key back in use."""
    for sim in chans.sims.values():
        httpx.post(sim.url + "/_sim/reset").raise_for_status()
    chans.drain("a", "b", "c", disabled=False)  # also closes their circuits
    with chans.admin() as c:
        for name in ("a", "b", "c"):
            for k in chans.channel(name)["keys"]:
                c.post(f"/admin/channels/{name}/keys/{k['prefix']}/enable")


def charged_once(chans: Channels, key: dict[str, Any], before: Decimal) -> None:
    assert chans.balance(key) == before - Decimal(str(PRICE))


# -- choosing ----------------------------------------------------------------------------------


def test_weighted_share_three_to_one(chans: Channels) -> None:
    key = chans.key()
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda _: chans.edit(key).status_code, range(80)))
    assert codes == [200] * 80
    a, b, c = (len(chans.seen(n)) for n in ("a", "b", "c"))
    assert a + b == 80 and c == 0  # priority 1 is not touched while priority 0 is healthy
    assert 0.60 <= a / 80 <= 0.90, (a, b)


def test_keys_of_a_pool_are_used_in_turn(chans: Channels) -> None:
    chans.drain("b")
    key = chans.key()
    for _ in range(4):
        assert chans.edit(key).status_code == 200
    used = [r["headers"]["authorization"] for r in chans.seen("a")]
    assert used == ["Bearer sk-…0001", "Bearer sk-…0002"] * 2 or used == [
        "Bearer sk-…0002", "Bearer sk-…0001"] * 2  # fmt: skip


def test_priority_and_drain_by_patch(chans: Channels) -> None:
    key = chans.key()
    chans.drain("a", "b")
    assert chans.channel("a")["state"] == "disabled"
    for _ in range(3):
        assert chans.edit(key).status_code == 200
    assert [len(chans.seen(n)) for n in ("a", "b", "c")] == [0, 0, 3]
    (path,) = {r["path"] for r in chans.seen("c")}
    assert path == "/openai/deployments/img-edit/images/edits"
    chans.drain("a", "b", disabled=False)
    assert chans.edit(key).status_code == 200
    assert len(chans.seen("c")) == 3  # restored: back to priority 0
    with chans.admin() as c:
        r = c.get("/admin/usage", params={"key_id": key["id"], "group_by": "channel"})
    groups = {g["group"]: g["requests"] for g in r.json()["data"]}
    assert groups.pop("c") == 3 and sum(groups.values()) == 1
    with chans.admin() as c:  # each drain and restore is in the audit log
        audit = c.get("/admin/audit", params={"target": "a"}).json()["data"]
    assert [e["action"] for e in audit][:2] == ["channel.enable", "channel.disable"]
    assert audit[0]["source"] == "api" and audit[0]["actor"] == "admin"


# -- failover ----------------------------------------------------------------------------------

FAILURES = {
    "500": {"kind": "status", "status": 500},
    "503": {"kind": "status", "status": 503},
    "429": {"kind": "status", "status": 429, "retry_after": 30},
    "401": {"kind": "status", "status": 401, "message": f"Incorrect API key {KEY_A1}"},
    "403": {"kind": "status", "status": 403},
    "404-model": {
        "kind": "status",
        "status": 404,
        "code": "model_not_found",
        "message": "The model `gpt-image-1` does not exist",
    },
    "timeout": {"kind": "timeout", "delay_s": 3},
    "disconnect": {"kind": "disconnect"},
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_failover_on_each_failure_kind(chans: Channels, failure: str) -> None:
    chans.drain("b")  # a fails once; the next attempt is another key of a, or c
    chans.fault("a", times=1, **FAILURES[failure])
    key = chans.key()
    before = chans.balance(key)
    r = chans.edit(key)
    assert r.status_code == 200, r.text
    assert chans.attempts() == 2
    charged_once(chans, key, before)
    with chans.admin() as c:
        (row,) = c.get("/admin/usage/records", params={"key_id": key["id"]}).json()["data"]
    assert row["status"] == "succeeded"
    served = [name for name, st in chans.statuses().items() if 200 in st]
    assert [row["channel"]] == served  # the ledger names the channel that served it


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "status", "status": 400, "message": "Invalid value for 'quality'"},
        {"kind": "safety", "where": "prompt"},
    ],
)
def test_no_failover_on_an_answer_about_the_request(chans: Channels, fault: dict[str, Any]) -> None:
    chans.fault("a", times=1, **fault)
    chans.fault("b", times=1, **fault)
    key = chans.key()
    before = chans.balance(key)
    r = chans.edit(key)
    assert r.status_code == 400, r.text
    assert chans.attempts() == 1, chans.statuses()  # exactly one upstream attempt
    assert chans.balance(key) == before


def test_all_channels_down_is_an_envelope_refunded_within_the_deadline(chans: Channels) -> None:
    for name in ("a", "b", "c"):
        chans.fault(name, kind="status", status=500, times=None)
    key = chans.key()
    before = chans.balance(key)
    t0 = time.monotonic()
    r = chans.edit(key)
    assert time.monotonic() - t0 < 5  # routing.deadline_s
    assert r.status_code in (502, 503)
    assert r.json()["error"]["type"] == "api_error"
    assert chans.balance(key) == before
    assert chans.attempts() == 3  # routing.max_attempts
    # every channel's circuit is open now (threshold 2 for a and b needs another round)
    r = chans.edit(key)
    assert r.status_code in (502, 503) and chans.balance(key) == before


def test_all_channels_drained_is_503(chans: Channels) -> None:
    chans.drain("a", "b", "c")
    key = chans.key()
    before = chans.balance(key)
    r = chans.edit(key)
    assert r.status_code == 503 and r.json()["error"]["code"] == "service_unavailable"
    assert chans.attempts() == 0 and chans.balance(key) == before


# -- health ------------------------------------------------------------------------------------


def test_circuit_opens_probes_and_closes(chans: Channels) -> None:
    chans.drain("b")
    chans.fault("a", kind="status", status=500, times=2)
    key = chans.key()
    for _ in range(2):  # a fails twice (threshold 2), c serves both
        assert chans.edit(key).status_code == 200
    a = chans.channel("a")
    assert a["state"] == "open" and a["cooldown_until"] is not None
    assert a["last_error"] == "HTTP 500"
    assert chans.edit(key).status_code == 200
    assert len(chans.seen("a")) == 2  # open: not tried
    deadline = time.monotonic() + 5
    while chans.channel("a")["state"] == "open":  # cooldown_s 2: then one probe may pass
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert chans.channel("a")["state"] == "half_open"
    assert chans.edit(key).status_code == 200
    assert len(chans.seen("a")) == 3  # the probe went to a, and succeeded
    assert chans.channel("a")["state"] == "closed"
    metrics = httpx.get(chans.gateway.url + "/metrics").text
    assert 'imagegate_channel_state{channel="a"} 0' in metrics
    assert 'imagegate_upstream_attempts_total{channel="a",outcome="server_error"} ' in metrics


def test_429_cools_down_only_that_key(chans: Channels) -> None:
    chans.drain("b", "c")
    chans.fault("a", kind="status", status=429, retry_after=30, times=1)
    key = chans.key()
    assert chans.edit(key).status_code == 200
    keys = {k["state"] for k in chans.channel("a")["keys"]}
    assert keys == {"cooling", "ok"}
    assert chans.channel("a")["state"] == "closed"  # a 429 does not open the circuit
    first_auth = chans.seen("a")[0]["headers"]["authorization"]
    for _ in range(2):
        assert chans.edit(key).status_code == 200
    later = {r["headers"]["authorization"] for r in chans.seen("a")[1:]}
    assert later and first_auth not in later  # the cooling key is skipped


def test_401_takes_a_key_out_until_re_enabled(chans: Channels) -> None:
    chans.drain("b", "c")
    chans.fault("a", kind="status", status=401, times=1, message=f"bad key {KEY_A1}")
    key = chans.key()
    r = chans.edit(key)
    assert r.status_code == 200
    out = [k for k in chans.channel("a")["keys"] if k["state"] == "disabled"]
    assert len(out) == 1 and KEY_A1 not in str(chans.channel("a"))
    for _ in range(2):
        assert chans.edit(key).status_code == 200
    auths = [r["headers"]["authorization"] for r in chans.seen("a")]
    assert auths[1] == auths[2] == auths[3] != auths[0]
    with chans.admin() as c:
        r = c.post(f"/admin/channels/a/keys/{out[0]['prefix']}/enable")
        assert r.status_code == 200, r.text
    assert {k["state"] for k in chans.channel("a")["keys"]} == {"ok"}
    for _ in range(2):
        assert chans.edit(key).status_code == 200
    assert auths[0] in {r["headers"]["authorization"] for r in chans.seen("a")[4:]}


def test_stream_fails_over_before_its_first_event(chans: Channels) -> None:
    chans.drain("b")
    chans.fault("a", kind="status", status=503, times=1)
    key = chans.key()
    before = chans.balance(key)
    client = OpenAI(base_url=chans.gateway.url + "/v1/openai", api_key=key["key"], max_retries=0)
    stream = client.images.edit(
        model="gpt-image-1",
        image=("a.png", images.png(), "image/png"),
        prompt="stream it",
        stream=True,
        partial_images=1,
    )
    kinds = [event.type for event in stream]
    assert kinds[-1] == "image_edit.completed"
    assert chans.attempts() == 2
    charged_once(chans, key, before)


def test_admin_channels_unknown_names_are_404(chans: Channels) -> None:
    with chans.admin() as c:
        assert c.patch("/admin/channels/nope", json={"disabled": True}).status_code == 404
        assert c.post("/admin/channels/a/keys/zz-nope/enable").status_code == 404
        r = c.patch("/admin/channels/a", json={"disabled": "yes"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "disabled"


def test_imagegate_channels_command(chans: Channels, capsys: pytest.CaptureFixture[str]) -> None:
    from app.cli import main

    base = ["channels", "--url", chans.gateway.url, "--admin-key", ADMIN_KEY]
    assert main(base) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["NAME", "KIND", "STATE"]
    assert "azure-openai" in table and "sk-a1-se…:ok" in table
    assert KEY_A1 not in table
    assert main([*base, "disable", "b"]) == 0
    assert chans.channel("b")["state"] == "disabled"
    assert main([*base, "enable", "b"]) == 0
    assert chans.channel("b")["state"] == "closed"
    assert main([*base, "enable-key", "a", "sk-a1"]) == 0
    assert main([*base, "enable-key", "a", "zz"]) == 2
    assert "no key" in capsys.readouterr().err
    assert main([*base, "--json"]) == 0
    assert {c["name"] for c in json.loads(capsys.readouterr().out)} == {"a", "b", "c"}
