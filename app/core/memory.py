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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 64 * 1024 * 1024  # above the largest image (50 MB): served from the heap
TRIM_THRESHOLD = 64 * 1024 * 1024  # keep up to this much freed memory for reuse


def tune_malloc() -> bool:
    """Apply the thresholds; False where the C library is not glibc (nothing changes)."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
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
