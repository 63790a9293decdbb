"""The request's spool: temporary files that hold large image bytes instead of the heap.

An edit waits 10-120 s upstream, so a gateway holds thousands of requests in flight; an 8 MB
upload kept in memory for that long costs 8 MB of RSS per request. Image bytes above
`limits.spool_threshold_bytes` are therefore written to a file in `limits.spool_dir` as they
arrive (the body parser, the URL fetcher, the `data:` URL decoder) and travel on as a
`SpooledBlob` (app/domain/blob.py). What is spooled, where, and the disk it needs:
docs/OPERATIONS.md, "Spool".

Files are anonymous (`O_TMPFILE`): they have no name, so the kernel frees them when the last
descriptor closes, even after `kill -9`. Where the filesystem refuses `O_TMPFILE` (or
`limits.spool_anonymous` is false), a named file `imagegate-spool-<pid>-*` is created and
unlinked at once; only a crash inside that window can leave one behind, and `sweep` (run when
each gateway process starts) removes those.

A `Spool` belongs to one request: the edit route creates it and closes it when the response
has been sent, whatever happened (docs/ARCHITECTURE.md). Closing closes every descriptor the
spool made, so every blob it handed out ends with the request.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Final

from app.core.config import LimitsConfig
from app.core.errors import GatewayError
from app.core.logging import fields, get_logger
from app.domain.blob import Blob, SpooledBlob

__all__ = [
    "NAMED_PREFIX",
    "Sink",
    "Spool",
    "SpoolWriter",
    "prepare",
    "spool_dir",
    "sweep",
]

log = get_logger("imagegate.spool")

NAMED_PREFIX: Final = "imagegate-spool-"
_TMPFILE_REFUSED: Final = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL})

# Directories whose filesystem refused O_TMPFILE once: do not ask again for every file.
_no_tmpfile: set[str] = set()


def spool_dir(limits: LimitsConfig, data_dir: Path) -> Path:
    """Where spool files go: `limits.spool_dir`, else `<data_dir>/spool`."""
    return Path(limits.spool_dir) if limits.spool_dir else data_dir / "spool"


def _disk_error(exc: OSError) -> GatewayError:
    log.error("spool.write_failed", exc_info=exc)
    return GatewayError(
        "service_unavailable", "the gateway cannot buffer this upload right now (spool disk)"
    )


class SpoolWriter:
    """Appends bytes to one spool file; `finish` turns what was written into a blob."""

    __slots__ = ("fd", "size")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append `data` (to the page cache: chunk-sized writes do not block the loop)."""
        n = len(data)
        try:
            done = os.write(self.fd, data)
            while done < n:  # a short write to a regular file means a full disk, or a signal
                view = memoryview(data)[done:]
                done += os.write(self.fd, view)
        except OSError as exc:
            raise _disk_error(exc) from None
        self.size += n

    def finish(self) -> SpooledBlob:
        return SpooledBlob(self.fd, self.size)


class Spool:
    """The temporary files of one request. Nothing touches the disk until a file is asked
    for, so a request with small images costs one small object."""

    __slots__ = ("_fds", "anonymous", "directory")

    def __init__(self, directory: Path | str, *, anonymous: bool = True) -> None:
        self.directory = str(directory)
        self.anonymous = anonymous
        self._fds: list[int] = []

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def open_files(self) -> int:
        return len(self._fds)

    def writer(self) -> SpoolWriter:
        """A new empty spool file to append to (503 if the spool directory is unusable)."""
        try:
            fd = self._open()
        except OSError as exc:
            raise _disk_error(exc) from None
        self._fds.append(fd)
        return SpoolWriter(fd)

    def _open(self) -> int:
        directory = self.directory
        for attempt in (1, 2):
            try:
                if self.anonymous and directory not in _no_tmpfile:
                    try:
                        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
                    except OSError as exc:
                        if exc.errno not in _TMPFILE_REFUSED:
                            raise
                        _no_tmpfile.add(directory)
                        log.warning("spool.no_tmpfile", extra=fields(dir=directory))
                return _named_file(directory)
            except FileNotFoundError:
                if attempt == 2:
                    raise
                os.makedirs(directory, mode=0o700, exist_ok=True)  # removed while running
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close every file this spool made (their blobs become unreadable); idempotent."""
        fds, self._fds = self._fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


class Sink:
    """Bytes that arrive in pieces (a fetched body, a decoded `data:` URL): kept in memory up to
    `threshold` bytes, in a spool file beyond -- from the start when `expected` (a declared
    length) is already larger. Without a spool everything stays in memory."""

    __slots__ = ("_buf", "_spool", "_threshold", "_writer")

    def __init__(self, spool: Spool | None, threshold: int, expected: int | None = None) -> None:
        self._spool = spool
        self._threshold = threshold
        self._buf = bytearray()
        self._writer: SpoolWriter | None = None
        if spool is not None and expected is not None and expected > threshold:
            self._writer = spool.writer()

    def __len__(self) -> int:
        return self._writer.size if self._writer is not None else len(self._buf)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._writer is not None:
            self._writer.write(data)
            return
        self._buf += data
        if self._spool is not None and len(self._buf) > self._threshold:
            self._writer = self._spool.writer()
            self._writer.write(self._buf)
            self._buf = bytearray()

    def finish(self) -> Blob:
        if self._writer is not None:
            return self._writer.finish()
        return bytes(self._buf)


def _named_file(directory: str) -> int:
    """The fallback: a named file, unlinked before anyone can use it (see `sweep`)."""
    fd, path = tempfile.mkstemp(prefix=f"{NAMED_PREFIX}{os.getpid()}-", dir=directory)
    try:
        os.unlink(path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def prepare(directory: Path) -> int:
    """Create the spool directory (mode 0700) and sweep it; returns the files removed."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return sweep(directory)


def sweep(directory: Path) -> int:
    """Remove named spool files whose process is gone, or that are older than the process
    now holding their pid (a pid reused after a restart). Returns how many were removed.

    Anonymous files need no sweep; named ones are unlinked right after creation, so only a
    process killed in between leaves one. Files that do not look like ours are left alone.
    """
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for entry in entries:
        name = entry.name
        if not name.startswith(NAMED_PREFIX):
            continue
        pid_text = name[len(NAMED_PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        try:
            mtime = entry.stat(follow_symlinks=False).st_mtime
        except FileNotFoundError:
            continue
        started = _started(int(pid_text))
        # The boot time is whole seconds: a file made up to 2 s before its process started
        # can only be a predecessor's, and is swept next time.
        if started is not None and mtime >= started - 2:
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed += 1
    if removed:
        log.warning("spool.swept", extra=fields(dir=str(directory), removed=removed))
    return removed


def _started(pid: int) -> float | None:
    """When process `pid` started (epoch seconds), or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open("/proc/stat", "rb") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
        # Field 22 (start time in clock ticks after boot); the command name before ')' may
        # contain spaces, so count from after it (where field 3 is index 0).
        ticks = int(stat.rsplit(b")", 1)[1].split()[19])
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except FileNotFoundError:
        return None if os.path.isdir("/proc/self") else _exists(pid)
    except (OSError, ValueError, IndexError, StopIteration):
        return _exists(pid)


def _exists(pid: int) -> float | None:
    """Without /proc: a live pid counts as started at boot (its files are kept)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return 0.0
