"""Heap trimming: free heap a burst of uploads left behind goes back to the OS. Measured in a
process of its own (pytest's heap is not a clean slate)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap

import pytest

from app.core.memory import HeapTrimmer

BURST = textwrap.dedent(
    """
    import asyncio, json, os
    from app.core.memory import HeapTrimmer, tune_malloc

    def rss_mib():
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    async def main():
        tune_malloc()  # as serve runs: freed blocks stay in the heap unless trimmed
        trimmer = HeapTrimmer(delay_s=0.05)
        start = rss_mib()
        reads, keep = [], []
        for i in range(240):  # socket-read-sized buffers between small live objects
            reads.append(os.urandom(256 * 1024))
            keep.append([object() for _ in range(40)])
            if len(reads) > 160:
                reads.pop(0)
            trimmer.soon()  # as the edit route calls it: coalesced into one trim
        reads.clear()
        freed = rss_mib()
        await asyncio.sleep(0.2)
        print(json.dumps(dict(start=start, freed=freed, trimmed=rss_mib(), trims=trimmer.trims)))

    asyncio.run(main())
    """
)


@pytest.mark.skipif(not HeapTrimmer().available, reason="needs glibc's malloc_trim")
def test_a_bursts_free_heap_goes_back_to_the_os_in_one_trim() -> None:
    out = subprocess.run(
        [sys.executable, "-c", BURST], capture_output=True, text=True, check=True, timeout=60
    )
    r = json.loads(out.stdout)
    assert r["freed"] - r["start"] > 30  # the burst's buffers are free but still resident
    assert r["trims"] == 1
    assert r["freed"] - r["trimmed"] > 25  # most of it went back to the OS


async def test_disabled_trimmer_never_schedules() -> None:
    trimmer = HeapTrimmer(delay_s=0.01, enabled=False)
    trimmer.soon()
    await asyncio.sleep(0.05)
    assert trimmer.trims == 0


async def test_cancel_drops_a_pending_trim() -> None:
    trimmer = HeapTrimmer(delay_s=0.05)
    trimmer.soon()
    trimmer.cancel()
    await asyncio.sleep(0.1)
    assert trimmer.trims == 0
