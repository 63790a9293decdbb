"""Session-wide fixtures: one real redis-server, (started on first use) one real 3-master
Redis Cluster and one S3 endpoint for the run; tests flush what they need."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import configuration

from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import RedisServer
from tests.support.s3_server import S3Endpoint, S3Server

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


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Endpoint]:
    """One S3 endpoint for the run: moto's standalone server, or IMAGEGATE_TEST_S3_URL (MinIO).
    Tests isolate themselves with a fresh key prefix (`s3.new_prefix()`)."""
    server = S3Server()
    try:
        yield server.start()
    finally:
        server.stop()
