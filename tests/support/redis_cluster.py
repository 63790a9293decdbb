"""A real 3-master Redis Cluster the tests start themselves (no replicas, free ports).

Three `redis-server --cluster-enabled yes` processes, joined by `redis-cli --cluster create`,
ready when every node reports `cluster_state:ok`. Nodes keep AOF and `nodes.conf` in their own
directory, so `kill(i)` (SIGKILL) followed by `restart(i)` brings a master back with its slots
and its data. `cluster-require-full-coverage no`: a dead master fails only its own slots.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.support.net import free_port

NODE_TIMEOUT_MS = 1000


class RedisCluster:
    def __init__(self, masters: int = 3, *, tls_dir: Path | None = None) -> None:
        """`tls_dir` (holding ca.pem, cert.pem, key.pem for 127.0.0.1): the nodes speak TLS
        only, the cluster bus too; `url` is then `rediss+cluster://...`."""
        exe = shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        if exe is None or cli is None:
            raise RuntimeError("redis-server/redis-cli are not on PATH")
        self.exe, self.cli = exe, cli
        self.root = Path(tempfile.mkdtemp(prefix="imagegate-cluster-"))
        self.ports = [free_port() for _ in range(masters)]
        # the cluster bus port: by default port + 10000, which a high free port overflows
        self.bus_ports = [free_port() for _ in range(masters)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * masters
        self.tls_dir = tls_dir

    def _client(self, port: int, **kwargs: object) -> redis.Redis:
        if self.tls_dir is not None:
            kwargs.update(ssl=True, ssl_ca_certs=str(self.tls_dir / "ca.pem"))
        return redis.Redis(host="127.0.0.1", port=port, **kwargs)  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        """The seed-node URL the gateway takes (two of the three nodes: seeds need not be all)."""
        nodes = ",".join(f"127.0.0.1:{p}" for p in self.ports[:2])
        if self.tls_dir is not None:
            return f"rediss+cluster://{nodes}?ssl_ca_certs={self.tls_dir / 'ca.pem'}"
        return "redis+cluster://" + nodes

    def _dir(self, i: int) -> Path:
        d = self.root / str(self.ports[i])
        d.mkdir(exist_ok=True)
        return d

    def _spawn(self, i: int) -> None:
        d = self._dir(i)
        args = [
            self.exe,
            "--port", str(self.ports[i]), "--bind", "127.0.0.1", "--dir", str(d),
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-port", str(self.bus_ports[i]),
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            "--cluster-require-full-coverage", "no",
            "--save", "", "--appendonly", "yes", "--appendfsync", "always",
            "--daemonize", "no", "--logfile", str(d / "redis.log"),
        ]  # fmt: skip
        if self.tls_dir is not None:
            t = self.tls_dir
            args[1:3] = ["--port", "0", "--tls-port", str(self.ports[i])]
            args += [
                "--tls-cert-file", str(t / "cert.pem"), "--tls-key-file", str(t / "key.pem"),
                "--tls-ca-cert-file", str(t / "ca.pem"), "--tls-auth-clients", "no",
                "--tls-cluster", "yes",
            ]  # fmt: skip
        self.procs[i] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self._client(self.ports[i], socket_timeout=0.5)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.exceptions.BusyLoadingError:
                    time.sleep(0.02)
                except redis.exceptions.RedisError:
                    if self.procs[i].poll() is not None or time.monotonic() > deadline:  # type: ignore[union-attr]
                        raise RuntimeError(f"cluster node :{self.ports[i]} did not start") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def start(self) -> RedisCluster:
        for i in range(len(self.ports)):
            self._spawn(i)
        tls = ["--tls", "--cacert", str(self.tls_dir / "ca.pem")] if self.tls_dir else []
        subprocess.run(
            [self.cli, *tls, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60,
        )  # fmt: skip
        self.wait_ok()
        return self

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Every live node says cluster_state:ok and knows all slots."""
        deadline = time.monotonic() + timeout
        for i, port in enumerate(self.ports):
            if self.procs[i] is None or self.procs[i].poll() is not None:  # type: ignore[union-attr]
                continue
            client = self._client(port, socket_timeout=1)
            try:
                while True:
                    try:
                        info = client.execute_command("CLUSTER", "INFO")
                        text = info.decode() if isinstance(info, bytes) else str(info)
                        if "cluster_state:ok" in text and "cluster_slots_ok:16384" in text:
                            break
                    except redis.exceptions.RedisError:
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"cluster not ok on :{port}")
                    time.sleep(0.05)
            finally:
                client.close()

    def node_of(self, key: str) -> int:
        """Index of the master that holds `key`'s slot."""
        client = self._client(self.ports[0])
        try:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for lo, hi, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if lo <= slot <= hi:
                    return self.ports.index(int(primary[1]))
        finally:
            client.close()
        raise LookupError(key)

    def keys_on(self, i: int, pattern: str = "*") -> list[str]:
        client = self._client(self.ports[i], decode_responses=True)
        try:
            return sorted(str(k) for k in client.scan_iter(match=pattern, count=1000))
        finally:
            client.close()

    def flushall(self) -> None:
        for i, port in enumerate(self.ports):
            if self.procs[i] is None or self.procs[i].poll() is not None:  # type: ignore[union-attr]
                continue
            client = self._client(port)
            try:
                client.flushall()
            finally:
                client.close()

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self, i: int) -> None:
        """Start a killed node again (same port, AOF and nodes.conf) and wait for the cluster."""
        self._spawn(i)
        self.wait_ok()

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(self.root, ignore_errors=True)
