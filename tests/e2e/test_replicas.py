"""Replicas that share everything: two gateway processes, one Redis, one S3 bucket.

The bucket is moto's standalone S3 server (or MinIO/S3 when IMAGEGATE_TEST_S3_URL is set).
Results written through one replica are served by the other; queued tasks' images live in the
bucket, not in Redis, and are gone once the task ends; a replica killed with SIGKILL while it
holds queued and running callback tasks loses none of them.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from PIL import Image

from app.core.config import ResultsConfig, StorageConfig
from app.simulator import create_simulator_app
from app.tasks.redis_queue import shard_tags
from tests.e2e.conftest import ADMIN_KEY, start_stack
from tests.support import images
from tests.support.net import ThreadedServer
from tests.support.procs import GatewayProcess, write_config
from tests.support.receiver import receiver
from tests.support.redis_server import RedisServer
from tests.support.s3_server import S3Endpoint, assert_signed_expiry

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
EDITS = "/v1/images/edits"
PNG = images.png(64, 64)
LEASE_S = 3


def noise_png(size: int = 600) -> bytes:
    """A PNG of about 1 MB (random pixels do not compress)."""
    img = Image.frombytes("RGB", (size, size), os.urandom(size * size * 3))
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=0)
    return buf.getvalue()


class Fleet:
    """A simulator, the shared Redis, a fresh prefix in the shared bucket, two replicas."""

    def __init__(self, redis_server: RedisServer, s3: S3Endpoint, **storage: Any) -> None:
        redis_server.flushall()
        self.redis_url = redis_server.url
        self.s3 = s3
        self.prefix = s3.new_prefix()
        self.sim = ThreadedServer(create_simulator_app()).start()
        workdir = Path(tempfile.mkdtemp(prefix="imagegate-fleet-"))
        self.config = write_config(
            self.sim.url,
            workdir / "gateway.yaml",
            storage=s3.storage_config(prefix=self.prefix, **storage),
            tasks={"workers": 4, "lease_s": LEASE_S},
            callbacks={"max_attempts": 5, "backoff_base_s": 0.2, "backoff_max_s": 1,
                       "timeout_s": 5},
        )  # fmt: skip
        self.env = {
            "IMAGEGATE_REDIS_URL": redis_server.url,
            "IMAGEGATE_ADMIN_KEY": ADMIN_KEY,
            "IMAGEGATE_ALLOW_PRIVATE_URLS": "true",
        }
        procs = [GatewayProcess(self.config, env=self.env) for _ in range(2)]
        with ThreadPoolExecutor(2) as pool:
            self.replicas = list(pool.map(lambda g: g.start(), procs))

    @property
    def a(self) -> GatewayProcess:
        return self.replicas[0]

    @property
    def b(self) -> GatewayProcess:
        return self.replicas[1]

    def create_key(self, **body: Any) -> dict[str, Any]:
        r = httpx.post(self.a.url + "/admin/keys", headers=ADMIN, timeout=10,
                       json={"name": "t", "max_concurrency": 100, **body})  # fmt: skip
        assert r.status_code == 201, r.text
        return dict(r.json())

    def admin_get(self, path: str, **params: Any) -> Any:
        r = httpx.get(self.b.url + path, headers=ADMIN, params=params, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def bucket_keys(self, folder: str = "") -> list[str]:
        listed = self.s3.client().list_objects_v2(
            Bucket=self.s3.bucket, Prefix=self.prefix + folder
        )
        return [o["Key"] for o in listed.get("Contents", [])]

    def latency(self, seconds: float) -> None:
        httpx.post(self.sim.url + "/_sim/config", json={"latency_s": seconds}, timeout=5)

    def close(self) -> None:
        for g in self.replicas:
            g.stop()
        self.sim.stop()


@pytest.fixture(scope="module")
def fleet(redis_server: RedisServer, s3: S3Endpoint) -> Iterator[Fleet]:
    f = Fleet(redis_server, s3)
    try:
        yield f
    finally:
        f.close()


def running_claims(redis_url: str) -> list[dict[str, Any]]:
    """Claimed (running) task entries over every queue shard, with the consumer holding each."""
    r = redis.Redis.from_url(redis_url)
    claims: list[dict[str, Any]] = []
    try:
        for tag in shard_tags(8):
            try:
                claims += r.xpending_range(f"ig:{{{tag}}}:stream", "workers", "-", "+", 100)
            except redis.ResponseError:  # this shard's group is not created yet
                continue
    finally:
        r.close()
    return claims


def edit(url: str, key: dict[str, Any], image: bytes = PNG, **data: str) -> httpx.Response:
    return httpx.post(
        url + EDITS,
        headers={"authorization": f"Bearer {key['key']}"},
        data={"model": "nano-banana", "prompt": "add a leaf", **data},
        files={"image": ("a.png", image, "image/png")},
        timeout=60,
    )


def test_result_written_through_a_is_served_by_b_byte_for_byte(fleet: Fleet) -> None:
    key = fleet.create_key(credits=5)
    r = edit(fleet.a.url, key)
    assert r.status_code == 200, r.text
    url = r.json()["data"][0]["url"]
    assert url.startswith(fleet.a.url + "/v1/files/")
    path = urlsplit(url).path
    name = path.rsplit("/", 1)[1]
    via_a = httpx.get(fleet.a.url + path, timeout=10)
    via_b = httpx.get(fleet.b.url + path, timeout=10)
    stored = fleet.s3.client().get_object(Bucket=fleet.s3.bucket, Key=fleet.prefix + name)
    assert via_b.status_code == 200 and via_b.headers["content-type"] == "image/png"
    assert via_b.content == via_a.content == stored["Body"].read()
    assert int(via_b.headers["content-length"]) == len(via_b.content)
    Image.open(io.BytesIO(via_b.content)).verify()  # a real image, whole
    missing = httpx.get(fleet.b.url + "/v1/files/" + "0" * 36 + "_0.png", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_queued_inputs_live_in_the_bucket_not_in_redis(fleet: Fleet) -> None:
    key = fleet.create_key(credits=5)
    big = noise_png()
    assert len(big) > 1_000_000
    fleet.latency(2.0)  # the tasks stay queued/running while we look
    try:
        with receiver() as rx:
            ids = [
                edit(g.url, key, big, callback_url=rx.url).json()["task_id"]
                for g in (fleet.a, fleet.b) * 3
            ]
            inputs = fleet.bucket_keys("inputs/")
            assert sorted(inputs) == sorted(f"{fleet.prefix}inputs/{i}" for i in ids)
            r = redis.Redis.from_url(fleet.redis_url)
            sizes = {k: r.memory_usage(k) or 0 for k in r.scan_iter(count=1000)}
            r.close()
            assert sizes and max(sizes.values()) < 256 * 1024, max(
                sizes.items(), key=lambda kv: kv[1]
            )
            rx.wait_for(6, timeout=60)
            assert {json.loads(d.body)["task_id"] for d in rx.deliveries} == set(ids)
            assert all(json.loads(d.body)["success"] for d in rx.deliveries)
    finally:
        fleet.latency(0)
    deadline = time.monotonic() + 10
    while fleet.bucket_keys("inputs/") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fleet.bucket_keys("inputs/") == []  # a finished task's inputs are deleted


def test_public_url_mode_points_at_the_bucket(redis_server: RedisServer, s3: S3Endpoint) -> None:
    """`public`: {public_base_url}{prefix}{name}, here the bucket's own path-style URL."""
    s = start_stack(storage=StorageConfig.model_validate(s3.storage_config(
        prefix=(prefix := s3.new_prefix()), url_mode="public",
        public_base_url=f"{s3.url}/{s3.bucket}/")))  # fmt: skip
    # what a CDN in front of the bucket (or a public-read policy on the prefix) provides
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{s3.bucket}/{prefix}*"}]}  # fmt: skip
    s3.client().put_bucket_policy(Bucket=s3.bucket, Policy=json.dumps(policy))
    try:
        key = s.create_key(credits=5)
        r = edit(s.url, key)
        assert r.status_code == 200, r.text
        url = r.json()["data"][0]["url"]
        assert url.startswith(f"{s3.url}/{s3.bucket}/{prefix}")
        got = httpx.get(url, timeout=10)
        assert got.status_code == 200
        Image.open(io.BytesIO(got.content)).verify()
    finally:
        s3.client().delete_bucket_policy(Bucket=s3.bucket)
        s.gateway.stop()
        s.sim.stop()


def test_presigned_redirect_works_and_expires_with_the_retention(s3: S3Endpoint) -> None:
    retention = 2
    s = start_stack(
        storage=StorageConfig.model_validate(
            s3.storage_config(prefix=s3.new_prefix(), url_mode="presign")
        ),
        results=ResultsConfig(retention_s=retention),
    )
    try:
        key = s.create_key(credits=5)
        r = edit(s.url, key)
        assert r.status_code == 200, r.text
        url = r.json()["data"][0]["url"]
        assert url.startswith(s.url + "/v1/files/")
        written = time.time()
        redirect = httpx.get(url, timeout=10)
        assert redirect.status_code == 302
        location = redirect.headers["location"]
        assert_signed_expiry(location, retention, slack_s=2)
        got = httpx.get(location, timeout=10)
        assert got.status_code == 200
        Image.open(io.BytesIO(got.content)).verify()
        # Past the retention the gateway refuses to sign again, and the signed URL is dead.
        time.sleep(max(0.0, written + retention + 1.2 - time.time()))
        late = httpx.get(url, timeout=10)
        assert late.status_code == 404 and late.json()["error"]["code"] == "not_found"
        if s3.enforces_presign_expiry:
            assert httpx.get(location, timeout=10).status_code == 403
    finally:
        s.gateway.stop()
        s.sim.stop()


def test_sigkill_replica_holding_queued_and_running_tasks(s3: S3Endpoint) -> None:
    """Replica A takes 12 callback tasks (4 run on each replica, 4 wait) and is killed with
    SIGKILL; B finishes every one within the lease plus a minute, each charged once.

    Its own Redis: the module's fleet still runs, and its workers would take these tasks."""
    own_redis = RedisServer(appendonly=False).start()
    fleet = Fleet(own_redis, s3)
    try:
        key = fleet.create_key(credits=10)
        fleet.latency(2.0)
        with receiver() as rx:
            ids = [edit(fleet.a.url, key, callback_url=rx.url).json()["task_id"]
                   for _ in range(12)]  # fmt: skip
            pending = running_claims(fleet.redis_url)
            deadline = time.monotonic() + 5
            while len(pending) < 8 and time.monotonic() < deadline:  # both replicas busy
                time.sleep(0.05)
                pending = running_claims(fleet.redis_url)
            consumers = {p["consumer"].decode() for p in pending}
            assert len(consumers) >= 2, pending  # A holds running tasks, B too
            fleet.a.kill()
            killed_at = time.monotonic()
            rx.wait_for(12, timeout=LEASE_S + 60)
            assert time.monotonic() - killed_at < LEASE_S + 60
            bodies = [json.loads(d.body) for d in rx.deliveries]
        assert sorted(b["task_id"] for b in bodies) == sorted(ids)
        assert all(b["success"] for b in bodies), bodies
        state = fleet.admin_get(f"/admin/keys/{key['id']}")
        assert state["balance"] == pytest.approx(10 - 12 * 0.14)
        rows = fleet.admin_get("/admin/usage/records", key_id=key["id"], limit=100)["data"]
        charged = [row["task_id"] for row in rows if row["credits"] > 0]
        assert sorted(charged) == sorted(ids)  # each charged exactly once
        # every result is served by the survivor; every input is gone
        for b in bodies:
            path = urlsplit(b["data"]["data"][0]["url"]).path
            assert httpx.get(fleet.b.url + path, timeout=10).status_code == 200
        deadline = time.monotonic() + 10
        while fleet.bucket_keys("inputs/") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert fleet.bucket_keys("inputs/") == []
    finally:
        fleet.latency(0)
        fleet.close()
        own_redis.cleanup()
