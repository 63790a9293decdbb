"""Counting what the gateway asks of Redis per request.

`INFO commandstats` alone overcounts round trips: commands a Lua script runs with
`redis.call` are counted too (one EVALSHA that touches five keys shows as six calls).
MONITOR tells them apart — script-issued commands are tagged `[db lua]`, client-issued ones
`[db ip:port]` — so the store round trips per request are counted from MONITOR over a fixed
number of sequential requests, minus what the gateway issues when idle (background workers,
sweeps) over an equally long window. A MULTI ... EXEC block from one connection counts as one
round trip; other pipelined commands can't be told apart and each count, so the number is an
upper bound on round trips. MONITOR slows Redis down, so it runs only for this count,
never while latency is timed.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections import Counter

_LINE = re.compile(rb'^\+\d+\.\d+ \[\d+ ([^\]]+)\] "([^"]+)"')


def _command(port: int, *args: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        payload = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
        s.sendall(payload.encode())
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            if buf.startswith(b"$"):
                n = int(buf[1 : buf.index(b"\r\n")])
                if len(buf) >= buf.index(b"\r\n") + 2 + n + 2:
                    break
            elif buf.endswith(b"\r\n"):
                break
        return buf


def commandstats(port: int) -> Counter[str]:
    """calls per command from INFO commandstats (includes commands run inside scripts)."""
    text = _command(port, "INFO", "commandstats").decode(errors="replace")
    out: Counter[str] = Counter()
    for m in re.finditer(r"cmdstat_([^:]+):calls=(\d+)", text):
        out[m.group(1)] = int(m.group(2))
    return out


class Monitor:
    """A MONITOR connection read on a thread; `snapshot()` is the client-issued command count."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._client: Counter[str] = Counter()
        self._script: Counter[str] = Counter()
        self._trips: Counter[str] = Counter()
        self._in_multi: set[bytes] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self._sock.sendall(b"MONITOR\r\n")
        self._sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buf = b""
        deadline = time.monotonic() + 600  # never outlive a run
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                chunk = self._sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            *lines, buf = buf.split(b"\r\n")
            for line in lines:
                m = _LINE.match(line)
                if not m:
                    continue
                who, cmd = m.group(1), m.group(2).decode(errors="replace").lower()
                with self._lock:
                    if who == b"lua":
                        self._script[cmd] += 1
                        continue
                    self._client[cmd] += 1
                    if who in self._in_multi:
                        if cmd in ("exec", "discard"):
                            self._in_multi.discard(who)
                    elif cmd == "multi":
                        self._in_multi.add(who)
                        self._trips["multi/exec"] += 1
                    else:
                        self._trips[cmd] += 1

    def snapshot(self) -> tuple[Counter[str], Counter[str]]:
        """(round trips, client-issued commands) so far, each by command name."""
        with self._lock:
            return Counter(self._trips), Counter(self._client)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()


def delta(after: Counter[str], before: Counter[str]) -> Counter[str]:
    return Counter({k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)})
