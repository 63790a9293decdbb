"""What an IMAGEGATE_REDIS_URL means, and the hot path over TLS to a real redis-server."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import trustme

from app.store.base import UsageRecord
from app.store.redis_store import RedisStore
from app.store.redis_url import parse_redis_url
from app.store.resp import RespClient, RespCluster, fast_client
from app.tasks.base import Task
from app.tasks.redis_queue import RedisTaskQueue
from tests.store.conftest import T0, make_key
from tests.support.net import free_port
from tests.support.redis_cluster import RedisCluster


def test_single_server_urls() -> None:
    t = parse_redis_url("redis://:s3cret@cache:6380/2")
    assert (t.cluster, t.tls, t.nodes, t.db, t.password) == (
        False,
        False,
        [("cache", 6380)],
        2,
        "s3cret",
    )
    t = parse_redis_url("rediss://user:pw@cache/0?ssl_cert_reqs=none")
    assert (t.tls, t.username, t.nodes, t.ssl_cert_reqs) == (
        True,
        "user",
        [("cache", 6379)],
        "none",
    )
    assert isinstance(fast_client("redis://127.0.0.1:1/0"), RespClient)


def test_cluster_urls() -> None:
    t = parse_redis_url("redis+cluster://10.0.0.1:7000,10.0.0.2:7001,[::1]:7002")
    assert t.cluster and not t.tls
    assert t.nodes == [("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002)]
    t = parse_redis_url("rediss+cluster://u:p@a:7000,b:7000?ssl_ca_certs=/ca.pem")
    assert (t.cluster, t.tls, t.username, t.password, t.ssl_ca_certs) == (
        True,
        True,
        "u",
        "p",
        "/ca.pem",
    )
    assert isinstance(fast_client("redis+cluster://127.0.0.1:1"), RespCluster)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://a:1,b:2/0", "redis+cluster://"),
        ("redis+cluster://a:1/3", "only database 0"),
        ("http://a:1", "scheme"),
        ("redis://a:port/0", "host:port"),
        ("rediss://a/0?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
    ],
)
def test_bad_urls_say_why(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        parse_redis_url(url)


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[tuple[int, Path]]:
    """A redis-server that speaks TLS only, with a certificate for 127.0.0.1."""
    root = Path(tempfile.mkdtemp(prefix="imagegate-tls-redis-"))
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
    cert.private_key_pem.write_to_path(str(root / "key.pem"))
    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", "0", "--tls-port", str(port),
         "--bind", "127.0.0.1", "--tls-cert-file", str(root / "cert.pem"),
         "--tls-key-file", str(root / "key.pem"), "--tls-ca-cert-file", str(root / "ca.pem"),
         "--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir", str(root)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(root / "ca.pem"))
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.RedisError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("TLS redis-server did not start") from None
            time.sleep(0.05)
    client.close()
    try:
        yield port, root / "ca.pem"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


async def test_store_over_tls(tls_redis: tuple[int, Path]) -> None:
    port, ca = tls_redis
    store = RedisStore(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}")
    try:
        await store.create_key(make_key("tls", balance=1000))  # redis-py over TLS
        adm = await store.admit("tls", reservation_id="r1", cost=300, rpm=10, max_concurrency=2,
                                now=T0, hold_s=60)  # fmt: skip
        assert adm.status == "ok"  # the lean client over TLS
        rec = UsageRecord(reservation_id="r1", key_id="tls", model="m", size_tier="request",
                          images=1, credits=300, reserved=300, task_id="r1", trace_id="t",
                          status="succeeded", latency_ms=1, created_at=T0)  # fmt: skip
        assert await store.settle("r1", "tls", 300, rec)
        key = await store.get_key("tls")
        assert key is not None and key.balance == 700
    finally:
        await store.close()
    # a client that does not trust the server's CA is refused, not silently downgraded
    wrong = RedisStore(f"rediss://127.0.0.1:{port}/0")
    try:
        with pytest.raises(Exception, match=r"(?i)unavailable|certificate"):
            await wrong.admit("tls", reservation_id="r2", cost=1, rpm=10, max_concurrency=2,
                              now=T0, hold_s=60)  # fmt: skip
    finally:
        await wrong.close()


async def test_store_and_queue_on_a_tls_cluster(tmp_path: Path) -> None:
    """`rediss+cluster://`: TLS to every node, for the lean client and redis-py alike."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cluster = RedisCluster(tls_dir=tmp_path).start()
    store = RedisStore(cluster.url)
    queue = RedisTaskQueue.from_url(cluster.url)
    try:
        assert cluster.url.startswith("rediss+cluster://")
        assert isinstance(store._fast, RespCluster)
        for i in range(6):  # keys on several masters
            await store.create_key(make_key(f"k{i}", balance=1000))
            adm = await store.admit(f"k{i}", reservation_id=f"r{i}", cost=100, rpm=10,
                                    max_concurrency=2, now=T0, hold_s=60)  # fmt: skip
            assert adm.status == "ok"
            rec = UsageRecord(reservation_id=f"r{i}", key_id=f"k{i}", model="m",
                              size_tier="request", images=1, credits=100, reserved=100,
                              task_id=f"r{i}", trace_id="t", status="succeeded", latency_ms=1,
                              created_at=T0)  # fmt: skip
            assert await store.settle(f"r{i}", f"k{i}", 100, rec)
        assert {(await store.get_key(f"k{i}")).balance for i in range(6)} == {900}  # type: ignore[union-attr]
        assert len({cluster.node_of(f"ig:{{k{i}}}:key") for i in range(6)}) >= 2
        task = Task(id="t-tls", key_id="k0", trace_id="t", model="m", created=T0)
        await queue.enqueue(task, b"payload")
        claimed = await queue.claim("w", lease_s=30, now=T0)
        assert claimed is not None and claimed.payload == b"payload"
    finally:
        await queue.close()
        await store.close()
        cluster.cleanup()
