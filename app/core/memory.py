"""Process resources for a gateway that holds thousands of edits in flight: open files, and
glibc malloc tuning for a process that moves large image buffers.

Open files: each edit in flight holds about three descriptors (the client's socket, the
upstream socket and, above the spool threshold, its spool file), so the usual soft limit of
1,024 would refuse new connections at ~330 in flight. `raise_open_files_limit` lifts the soft
limit to the hard one at start-up (docs/OPERATIONS.md).

Malloc:

Every upload and upstream body above glibc's mmap threshold is a fresh mmap that page-faults
in on first write and is unmapped on free, so an 8 MB edit paid ~10 ms of page faults across
its few copies (measured: c=1 8 MB edit p50 19.6 ms -> 10.4 ms with this tuning). Raising the
mmap and trim thresholds keeps freed large blocks in the heap for the next request. The cost:
RSS stays near its peak after a burst instead of shrinking (bounded by the trim threshold).

Heap trim: a burst of uploads leaves tens of MiB of freed chunks in the heap (each upload in
progress holds a few socket reads of up to 256 KiB; measured: 200 x 8 MB uploads, 64 at a time,
left ~38 MiB behind whatever the number in flight). `HeapTrimmer` gives free heap memory
beyond `FREE_HEAP_KEEP` back to the OS shortly after a large body has been read (the edit
route calls `soon()`), so RSS follows what requests hold rather than the burst's peak. A trim
that returns ~40 MiB takes ~13 ms; it runs at most four times a second.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import resource
from typing import Any

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

FREE_HEAP_KEEP = 2 * 1024 * 1024  # free heap left for reuse; more goes back to the OS
MMAP_THRESHOLD = 64 * 1024 * 1024  # above the largest image (50 MB): served from the heap
TRIM_THRESHOLD = 64 * 1024 * 1024  # keep up to this much freed memory for reuse


def _libc_function(name: str) -> Any | None:
    """A function of the C library by name; None where there is none (not glibc, or an older
    one), and then nothing here changes anything."""
    path = ctypes.util.find_library("c")
    if not path:
        return None
    try:
        return getattr(ctypes.CDLL(path), name)
    except (OSError, AttributeError):
        return None


def tune_malloc() -> bool:
    """Apply the thresholds; False where the C library is not glibc (nothing changes)."""
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


def raise_open_files_limit() -> tuple[int, int]:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit; returns (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):  # e.g. above fs.nr_open: keep what we have
            return soft, hard
        soft = target
    return soft, hard


class HeapTrimmer:
    """Returns the heap's free memory beyond `keep` bytes to the OS (glibc `malloc_trim`).

    `soon()` is called after a large request body has been read (the moment its socket
    buffers are freed); it schedules one trim `delay_s` later on the running loop, coalescing
    every call until then, so a burst of uploads costs at most one trim per `delay_s`. Nothing
    polls: reading the heap's statistics (`mallinfo2`) walks every free chunk and costs as much
    as the trim. `available` is False where the C library has no `malloc_trim` (not glibc) or
    when malloc tuning is off (`IMAGEGATE_MALLOC_TUNING=false`).
    """

    def __init__(
        self, keep: int = FREE_HEAP_KEEP, delay_s: float = 0.25, *, enabled: bool = True
    ) -> None:
        self.keep = keep
        self.delay_s = delay_s
        self.trims = 0
        self._malloc_trim = _libc_function("malloc_trim")
        self.available = enabled and self._malloc_trim is not None
        self._pending: asyncio.TimerHandle | None = None

    def soon(self) -> None:
        """Trim within `delay_s` (once, however often this is called meanwhile)."""
        if self._pending is None and self.available:
            self._pending = asyncio.get_running_loop().call_later(self.delay_s, self._fire)

    def _fire(self) -> None:
        self._pending = None
        self.trim()

    def trim(self) -> None:
        if self.available and self._malloc_trim is not None:
            self._malloc_trim(ctypes.c_size_t(self.keep))
            self.trims += 1

    def cancel(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
