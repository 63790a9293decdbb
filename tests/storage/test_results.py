"""Result files over both storages: URLs per mode, expiry refused everywhere, local sweeping."""

from __future__ import annotations

import time
from pathlib import Path

from app.core.config import StorageConfig
from app.results import Results
from app.storage import ObjectStorage
from app.storage.local import LocalStorage
from tests.support.s3_server import assert_signed_expiry

RETENTION = 3600


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


def test_urls_per_mode() -> None:
    storage = LocalStorage(Path("/tmp/unused-imagegate-results"))
    proxy = Results(storage, StorageConfig(), RETENTION)
    assert proxy.url("a_0.png", "https://gw.example") == "https://gw.example/v1/files/a_0.png"
    public = Results(
        storage,
        StorageConfig(url_mode="public", public_base_url="https://cdn.example/", prefix="prod/"),
        RETENTION,
    )
    assert public.url("a_0.png", "https://gw.example") == "https://cdn.example/prod/a_0.png"


async def test_expired_results_are_refused_in_every_mode(storage: ObjectStorage) -> None:
    clock = Clock()
    results = Results(storage, StorageConfig(), RETENTION, clock=clock)
    await results.put("r_0.png", b"png bytes")
    opened = await results.open("r_0.png")
    assert opened is not None
    assert b"".join([c async for c in opened.chunks]) == b"png bytes"
    assert await results.info("r_0.png") is not None
    url = await results.presigned("r_0.png")
    if storage.kind == "s3":
        assert url is not None
        assert_signed_expiry(url, RETENTION, slack_s=10)
    clock.t += RETENTION / 2
    if storage.kind == "s3":  # the signature expires with the result, not later
        url = await results.presigned("r_0.png")
        assert url is not None
        q = url.split("X-Amz-Expires=")[1].split("&")[0]
        assert abs(int(q) - RETENTION / 2) <= 5
    clock.t += RETENTION / 2 + 5
    assert await results.open("r_0.png") is None
    assert await results.info("r_0.png") is None
    assert await results.presigned("r_0.png") is None
    assert await results.open("../r_0.png") is None  # bad names are unknown names


async def test_sweeper_deletes_expired_local_results_only(storage: ObjectStorage) -> None:
    clock = Clock()
    results = Results(storage, StorageConfig(), RETENTION, clock=clock)
    await results.put("s_0.png", b"x")
    await storage.put("inputs/t1", b"queued input")
    assert await results.sweep() == 0
    clock.t += RETENTION + 5
    removed = await results.sweep()
    if storage.kind == "local":
        assert removed == 1
        assert await storage.get("s_0.png") is None
    else:  # S3: a bucket lifecycle rule expires objects; the gateway never lists the bucket
        assert removed == 0
    assert await storage.get("inputs/t1") == b"queued input"  # inputs are not results
