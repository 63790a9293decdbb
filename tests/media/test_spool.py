"""The request spool: anonymous or named-and-unlinked files, closed with the request; the
start-up sweep of named leftovers; the in-memory-then-file sink."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.core.config import LimitsConfig
from app.core.errors import GatewayError
from app.domain.blob import SpooledBlob
from app.media.spool import NAMED_PREFIX, Sink, Spool, prepare, spool_dir, sweep


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.mark.parametrize("anonymous", [True, False])
def test_spooled_bytes_read_back_and_leave_no_name(tmp_path: Path, anonymous: bool) -> None:
    spool = Spool(tmp_path, anonymous=anonymous)
    writer = spool.writer()
    data = os.urandom(700_000)
    writer.write(data[:100])
    writer.write(memoryview(data)[100:])
    blob = writer.finish()
    assert isinstance(blob, SpooledBlob) and len(blob) == len(data)
    assert blob.read_all() == data
    assert b"".join(blob.chunks(65536)) == data
    assert list(tmp_path.iterdir()) == []  # anonymous, or unlinked at once
    spool.close()
    assert not _fd_open(blob.fd)
    spool.close()  # idempotent


def test_close_closes_every_file_it_made(tmp_path: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    with Spool(tmp_path) as spool:
        fds = [spool.writer().fd for _ in range(5)]
        assert spool.open_files == 5
        assert all(_fd_open(fd) for fd in fds)
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_removed_directory_is_made_again(tmp_path: Path) -> None:
    gone = tmp_path / "spool"
    with Spool(gone) as spool:
        spool.writer().write(b"x")
    assert gone.is_dir()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_an_unusable_directory_is_a_503(tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    try:
        with Spool(tmp_path, anonymous=False) as spool, pytest.raises(GatewayError) as err:
            spool.writer()
        assert err.value.status == 503
    finally:
        tmp_path.chmod(0o700)


def test_default_directory_is_under_the_data_dir(tmp_path: Path) -> None:
    assert spool_dir(LimitsConfig(), tmp_path) == tmp_path / "spool"
    assert spool_dir(LimitsConfig(spool_dir=str(tmp_path / "x")), tmp_path) == tmp_path / "x"
    assert LimitsConfig(spool_dir="").spool_dir is None  # an unset ${VAR}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sweep_removes_leftovers_of_dead_and_earlier_processes(tmp_path: Path) -> None:
    dead = tmp_path / f"{NAMED_PREFIX}{_dead_pid()}-abc"
    reused = tmp_path / f"{NAMED_PREFIX}{os.getpid()}-old"  # our pid, but before we started
    mine = tmp_path / f"{NAMED_PREFIX}{os.getpid()}-new"  # ours, in the create-unlink window
    other = tmp_path / "something-else"
    for path in (dead, reused, mine, other):
        path.write_bytes(b"leftover")
    long_ago = time.time() - 10 * 86400
    os.utime(reused, (long_ago, long_ago))
    assert sweep(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, other.name])
    assert sweep(tmp_path / "absent") == 0


def test_prepare_creates_the_directory_private(tmp_path: Path) -> None:
    target = tmp_path / "a" / "spool"
    assert prepare(target) == 0
    assert target.is_dir() and (target.stat().st_mode & 0o777) == 0o700


def test_sink_keeps_small_bodies_in_memory_and_spools_large_ones(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        small = Sink(spool, 100)
        small.write(b"a" * 100)
        assert small.finish() == b"a" * 100 and spool.open_files == 0

        grows = Sink(spool, 100)
        grows.write(b"a" * 60)
        grows.write(b"b" * 60)
        blob = grows.finish()
        assert isinstance(blob, SpooledBlob) and blob.read_all() == b"a" * 60 + b"b" * 60

        declared = Sink(spool, 100, expected=101)
        assert spool.open_files == 2  # a file from the start
        declared.write(b"c")
        assert isinstance(declared.finish(), SpooledBlob)

        memory = Sink(None, 0)  # no spool: memory, whatever the size
        memory.write(b"d" * 1000)
        assert memory.finish() == b"d" * 1000
