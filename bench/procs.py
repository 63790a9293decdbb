"""Processes the benchmark starts, and what they cost (CPU, memory) read from /proc.

Every server the harness starts goes through `Supervisor`, which puts it in its own process
group so that stopping it also stops its children (nginx workers, uvicorn workers), and which
stops everything it started when the run ends, however it ends (normal exit, exception,
Ctrl-C). It never signals a process it did not start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# Debian packages that provide each tool the benchmark needs (installed if missing).
APT_PACKAGES = {"nginx": "nginx", "wrk": "wrk", "redis-server": "redis-server"}


class HarnessError(RuntimeError):
    """Something the benchmark itself needs failed; the run cannot produce honest numbers."""


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the tiny race with other programs is acceptable here)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def which(tool: str) -> str | None:
    """`shutil.which`, also looking in the sbin directories a non-login PATH may lack."""
    found = shutil.which(tool)
    if found:
        return found
    for d in ("/usr/sbin", "/sbin", "/usr/local/sbin"):
        p = Path(d) / tool
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def ensure_tools(tools: Sequence[str], log: IO[str]) -> dict[str, str]:
    """Path of each tool, installing the missing ones with apt-get (root only).

    The benchmark needs nginx (mock upstream), wrk (load generator) and redis-server (store).
    Installing them is part of the harness so `make bench` works on a fresh machine; a non-root
    user gets the exact command to run instead.
    """
    missing = [t for t in tools if which(t) is None]
    if missing:
        pkgs = sorted({APT_PACKAGES[t] for t in missing})
        cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *pkgs]
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise HarnessError(f"missing {', '.join(missing)}; install with: {' '.join(cmd)}")
        print(f"installing {' '.join(pkgs)} with apt-get ...", file=log, flush=True)
        env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
        for attempt in range(2):
            if attempt == 1:  # the package lists may be missing or stale: refresh once
                subprocess.run(
                    ["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600
                )
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            if done.returncode == 0:
                break
        else:
            raise HarnessError(f"`{' '.join(cmd)}` failed:\n{done.stderr[-2000:]}")
    paths = {t: which(t) for t in tools}
    absent = [t for t, p in paths.items() if p is None]
    if absent:
        raise HarnessError(f"still missing after install: {', '.join(absent)}")
    return {t: p for t, p in paths.items() if p is not None}


# --- /proc readings -------------------------------------------------------------------------
def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def process_tree(root: int) -> list[int]:
    """`root` and all its live descendants (uvicorn may fork workers; nginx forks workers)."""
    kids = _children_map()
    out: list[int] = []
    todo = [root]
    while todo and len(out) < 10_000:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return [p for p in out if Path(f"/proc/{p}").exists()]


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime+stime of the given processes plus their reaped children (cutime+cstime)."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        # fields[11..14] are utime, stime, cutime, cstime (stat fields 14..17)
        total += sum(int(x) for x in fields[11:15])
    return total / CLK_TCK


def rss_bytes(pids: Sequence[int]) -> int:
    """Sum of resident set sizes (statm), in bytes."""
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
        except (OSError, IndexError, ValueError):
            continue
    return total


def loaded_libraries(pid: int) -> set[str]:
    """Paths of the shared objects mapped by `pid` (to check uvloop/httptools are in use)."""
    names: set[str] = set()
    try:
        with open(f"/proc/{pid}/maps") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 6 and ".so" in parts[5]:
                    names.add(parts[5])
    except OSError:
        pass
    return names


# --- supervised processes -------------------------------------------------------------------
@dataclass
class Managed:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tree(self) -> list[int]:
        return process_tree(self.pid) if self.alive() else []

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass
class Supervisor:
    """Starts servers in their own process groups and stops all of them at the end."""

    log_dir: Path
    keep: bool = False
    procs: list[Managed] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Managed:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,  # own process group: stop() reaches its children
            )
        managed = Managed(name, proc, log_path)
        self.procs.append(managed)
        return managed

    def stop(self, managed: Managed, timeout: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL it if it is still there after `timeout`."""
        if managed in self.procs:
            self.procs.remove(managed)
        if managed.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(managed.pid, signal.SIGTERM)
        try:
            managed.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(managed.pid, signal.SIGKILL)
            managed.proc.wait(timeout=timeout)
        # a child that outlived its parent is still in the group: make sure it is gone
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(managed.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for managed in reversed(list(self.procs)):
            try:
                self.stop(managed)
            except Exception as exc:  # keep stopping the others
                print(f"warning: could not stop {managed.name} ({managed.pid}): {exc}")

    @contextlib.contextmanager
    def running(self) -> Iterator[Supervisor]:
        """Stops everything on exit unless `keep` (then prints how to stop them by pid)."""
        previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)
            if self.keep and self.procs:
                print("\n--keep: left running (stop with the kill commands):")
                for m in self.procs:
                    print(f"  {m.name:<12} pid {m.pid}   kill -TERM -- -{m.pid}   log {m.log_path}")
            else:
                self.stop_all()


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll `predicate()` until true; HarnessError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise HarnessError(f"timed out after {timeout:.0f}s waiting for {what}")
