"""One contract for object storage: the local directory and S3 (moto's server, or MinIO when
IMAGEGATE_TEST_S3_URL is set) must behave the same."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import httpx
import pytest

from app.storage import ObjectStorage, StorageError, check_key
from tests.support.s3_server import S3Endpoint, assert_signed_expiry
from tests.support.spool import Spooler


async def test_put_get_head_delete_round_trip(storage: ObjectStorage) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # more than one streamed chunk
    before = time.time()
    await storage.put("a_0.png", data)
    assert await storage.get("a_0.png") == data
    info = await storage.head("a_0.png")
    assert info is not None and info.size == len(data)
    assert before - 2 <= info.modified <= time.time() + 2
    opened = await storage.open("a_0.png")
    assert opened is not None and opened.info.size == len(data)
    assert b"".join([c async for c in opened.chunks]) == data
    await storage.delete("a_0.png")
    assert await storage.get("a_0.png") is None
    assert await storage.head("a_0.png") is None
    assert await storage.open("a_0.png") is None
    await storage.delete("a_0.png")  # deleting a missing object is fine


async def test_overwrite_and_nested_keys(storage: ObjectStorage) -> None:
    await storage.put("inputs/t1", b"first")
    await storage.put("inputs/t1", b"second")
    assert await storage.get("inputs/t1") == b"second"
    assert await storage.get("t1") is None
    assert await storage.get("inputs/missing") is None


async def test_delete_older_only_touches_its_folder_and_age(storage: ObjectStorage) -> None:
    await storage.put("old.png", b"x")
    await storage.put("inputs/old", b"y")
    cutoff = time.time() + 5  # everything written so far is "older"
    assert await storage.delete_older("inputs", cutoff) == 1
    assert await storage.get("inputs/old") is None
    assert await storage.get("old.png") == b"x"  # top level untouched by an inputs sweep
    assert await storage.delete_older("", time.time() - 3600) == 0  # nothing that old
    assert await storage.delete_older("", cutoff) == 1
    assert await storage.get("old.png") is None


@pytest.mark.parametrize("bad", ["../x", "/abs", "a//b", "a/../b", "", "a b", "x/."])
async def test_bad_keys_are_refused(storage: ObjectStorage, bad: str) -> None:
    with pytest.raises(ValueError):
        await storage.put(bad, b"x")
    with pytest.raises(ValueError):
        check_key(bad)


async def test_presigned_get_works_then_expires(storage: ObjectStorage, s3: S3Endpoint) -> None:
    await storage.put("p_0.png", b"presigned bytes")
    url = await storage.presign_get("p_0.png", 2)
    if storage.kind == "local":
        assert url is None
        return
    assert url is not None
    assert_signed_expiry(url, 2, slack_s=0)
    async with httpx.AsyncClient() as client:
        ok = await client.get(url)
        assert ok.status_code == 200 and ok.content == b"presigned bytes"
        if s3.enforces_presign_expiry:
            # SigV4 expiry is checked in whole seconds against X-Amz-Date + X-Amz-Expires.
            await asyncio.sleep(3.2)
            late = await client.get(url)
            assert late.status_code == 403


async def test_put_pieces_copies_file_backed_pieces(storage: ObjectStorage, tmp_path: Path) -> None:
    """An object from bytes and spooled files: above one S3 part (a multipart upload) and
    below it (one PUT); readers see the whole object, and no temporary file is left."""
    big, small = os.urandom(6 * 1024 * 1024 + 5), os.urandom(70_000)
    with Spooler() as spool:
        await storage.put_pieces("inputs/t9", [b"head", spool(big), b"", spool(small), b"tail"])
        assert await storage.get("inputs/t9") == b"head" + big + small + b"tail"
        await storage.put_pieces("inputs/t9", [b"x", spool(small)])  # replaces it
        assert await storage.get("inputs/t9") == b"x" + small
        await storage.put_pieces("inputs/t8", [])
        assert await storage.get("inputs/t8") == b""
    info = await storage.head("inputs/t9")
    assert info is not None and info.size == 1 + len(small)
    if storage.kind == "local":
        assert sorted(p.name for p in (tmp_path / "files" / "inputs").iterdir()) == ["t8", "t9"]


async def test_put_pieces_refuses_a_file_shorter_than_said(storage: ObjectStorage) -> None:
    with Spooler() as spool:
        short = spool(b"abc")
        short.size = 10  # the file holds 3 bytes
        with pytest.raises((StorageError, OSError)):
            await storage.put_pieces("inputs/short", [b"x", short])
    assert await storage.get("inputs/short") is None  # nothing half-written
