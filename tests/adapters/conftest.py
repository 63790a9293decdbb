"""One strict simulator per test module that asks for it, reset before each of its tests."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from app.simulator.app import create_simulator_app
from tests.support.net import ThreadedServer, serve


@pytest.fixture(scope="module")
def sim() -> Iterator[ThreadedServer]:
    with serve(create_simulator_app()) as server:
        yield server


@pytest.fixture
def fresh_sim(sim: ThreadedServer) -> ThreadedServer:
    httpx.post(sim.url + "/_sim/reset").raise_for_status()
    return sim
