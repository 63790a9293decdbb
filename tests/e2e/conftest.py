"""A real gateway and a real simulated upstream, over real HTTP on 127.0.0.1.

`stack` is module-scoped: a simulator, a gateway (embedded SQLite store in a temp data dir,
private URLs allowed only where a test says so) and an admin client. Tests create their own
keys with exactly the credits and limits they need. `any_stack` runs the main flows on both
stores: SQLite, and Redis (what production runs), each Redis stack with a redis-server of its
own so no other test's flush can touch it.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.api.app import create_app
from app.core.config import GatewayConfig, RoutingConfig, Settings, load_config
from app.simulator import create_simulator_app
from tests.support.net import ThreadedServer
from tests.support.redis_server import RedisServer

ADMIN_KEY = "test-admin-key"


@dataclass
class Stack:
    sim: ThreadedServer
    gateway: ThreadedServer
    data_dir: Path
    config: GatewayConfig
    redis: RedisServer | None = None

    def stop(self) -> None:
        self.gateway.stop()
        self.sim.stop()
        if self.redis is not None:
            self.redis.cleanup()

    @property
    def url(self) -> str:
        return self.gateway.url

    @property
    def sim_url(self) -> str:
        return self.sim.url

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
        )

    def create_key(self, credits: float | str = 100, **extra: Any) -> dict[str, Any]:
        with self.admin() as c:
            r = c.post("/admin/keys", json={"name": "test", "credits": credits, **extra})
            assert r.status_code == 201, r.text
            return dict(r.json())

    def balance(self, key_id: str) -> float:
        with self.admin() as c:
            return float(c.get(f"/admin/keys/{key_id}").json()["balance"])

    def sim_requests(self) -> list[dict[str, Any]]:
        return list(httpx.get(f"{self.sim_url}/_sim/requests", timeout=10).json())

    def clear_sim(self) -> None:
        httpx.delete(f"{self.sim_url}/_sim/requests", timeout=10)
        httpx.delete(f"{self.sim_url}/_sim/faults", timeout=10)

    def fault(self, **fault: Any) -> None:
        r = httpx.post(f"{self.sim_url}/_sim/faults", json=fault, timeout=10)
        assert r.status_code < 300, r.text


def gateway_config(
    settings: Settings, sim_url: str, config_file: Path | None = None, **overrides: Any
) -> GatewayConfig:
    """The shipped config (or `config_file`), pointed at the simulator, with fast retries."""
    config = load_config(
        settings, config_file or Path(__file__).parents[2] / "config" / "gateway.yaml"
    )
    upstreams = {}
    for name, up in config.upstreams.items():
        path = "/v1" if up.kind == "openai" else "/v1beta"
        upstreams[name] = up.model_copy(
            update={
                "base_url": sim_url + path,
                "api_key": "sk-test",
                "backoff_s": 0.01,
                "timeout_s": overrides.pop(f"{name}_timeout_s", 5.0),
            }
        )
    # These stacks test one channel's answers, not circuit breaking (tests/e2e/test_channels.py
    # does): a module's many injected failures must not open the circuit for the next test.
    overrides.setdefault("routing", RoutingConfig(failure_threshold=10_000))
    return config.model_copy(update={"upstreams": upstreams, **overrides})


def start_stack(
    *,
    allow_private: bool = False,
    public_base_url: str | None = None,
    config_file: Path | None = None,
    redis_url: str | None = None,
    store: str = "sqlite",
    **overrides: Any,
) -> Stack:
    data_dir = Path(tempfile.mkdtemp(prefix="imagegate-e2e-"))
    redis = RedisServer(appendonly=False).start() if store == "redis" else None
    sim = ThreadedServer(create_simulator_app()).start()
    settings = Settings(
        data_dir=data_dir,
        admin_key=ADMIN_KEY,
        allow_private_urls=allow_private,
        redis_url=redis.url if redis else redis_url,
        public_base_url=public_base_url,
    )
    config = gateway_config(settings, sim.url, config_file, **overrides)
    gateway = ThreadedServer(create_app(settings, config)).start()
    return Stack(sim=sim, gateway=gateway, data_dir=data_dir, config=config, redis=redis)


@contextlib.contextmanager
def running_stack(**kwargs: Any) -> Iterator[Stack]:
    """`start_stack(**kwargs)`, stopped on exit."""
    s = start_stack(**kwargs)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def any_stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    """The main flows on both stores."""
    with running_stack(store=request.param) as s:
        yield s


@pytest.fixture
def any_key(any_stack: Stack) -> dict[str, Any]:
    any_stack.clear_sim()
    return any_stack.create_key(credits=100, rpm=10_000, max_concurrency=50)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack() as s:
        yield s


@pytest.fixture(scope="module")
def open_stack() -> Iterator[Stack]:
    """Private URLs allowed (images served from 127.0.0.1 in the test)."""
    with running_stack(allow_private=True) as s:
        yield s


@pytest.fixture
def key(stack: Stack) -> dict[str, Any]:
    stack.clear_sim()
    return stack.create_key(credits=100, rpm=10_000, max_concurrency=50)
