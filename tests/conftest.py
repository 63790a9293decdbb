"""Session-wide fixtures: one real redis-server and (started on first use) one real 3-master
Redis Cluster for the run; tests flush what they need."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import configuration

from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import RedisServer

# Hypothesis caches (unicode tables, constants) go to the temp dir, not the worktree; the property
# tests keep no example database (see tests/e2e/test_properties.py).
configuration.set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "imagegate-hypothesis")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(appendonly=True).start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    cluster = RedisCluster().start()
    try:
        yield cluster
    finally:
        cluster.cleanup()
