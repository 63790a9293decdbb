"""The system under test: `imagegate serve` with production settings, and its Redis.

Production settings means what a deployment runs: the `imagegate serve` command (uvicorn with
uvloop and httptools, as the command chooses them), the Redis store (AOF on, as in
docker-compose), a real API key with auth, rate limits and credits enforced, info logging to
a file, and the repository's own `config/gateway.yaml` with only the upstreams changed to
point at the mocks (`retries: 0`, dummy api keys). One model is added, `bench-slow`, on an
upstream `slow` (the slow mock); that upstream's `max_concurrency` (its connection pool) is
raised so that the 1,000 in-flight requests of scenario (d) are really in flight upstream, not
queued in the gateway.
"""

from __future__ import annotations

import copy
import http.client
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.images import multipart_body
from bench.procs import (
    HarnessError,
    Managed,
    Supervisor,
    free_port,
    loaded_libraries,
    port_open,
    wait_until,
)

REPO = Path(__file__).resolve().parent.parent
MODEL = "gpt-image-1.5"
GEMINI_MODEL = "nano-banana"
SLOW_MODEL = "bench-slow"
SLOW_MAX_CONCURRENCY = 4096

FALLBACK_MODELS = {
    MODEL: {
        "adapter": "gpt-image",
        "upstream": "openai",
        "upstream_model": MODEL,
        "price": {"per_image": 0.12, "other_tier_multiplier": 1.5},
    },
    GEMINI_MODEL: {
        "adapter": "nano-banana",
        "upstream": "gemini",
        "upstream_model": "gemini-2.5-flash-image",
        "price": {"per_request": 0.14},
    },
}


# --- the imagegate command --------------------------------------------------------------------
def imagegate_argv() -> list[str]:
    """How to run the `imagegate` command: the installed script, or the package from the repo."""
    exe = shutil.which("imagegate")
    if exe:
        return [exe]
    return [sys.executable, "-c", "import sys; from app.cli import main; sys.exit(main())"]


def _env_base() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def cli_status() -> tuple[bool, str]:
    """Whether `imagegate serve` and `imagegate keys create` exist yet (they are being written)."""
    argv = imagegate_argv()
    for sub in (["--help"], ["serve", "--help"], ["keys", "create", "--help"]):
        try:
            done = subprocess.run(
                [*argv, *sub], capture_output=True, text=True, timeout=60, cwd=REPO, env=_env_base()
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"`imagegate {' '.join(sub)}`: {exc}"
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
            return False, f"`imagegate {' '.join(sub)}` exited {done.returncode}: {tail[0]}"
    return True, "ok"


# --- redis --------------------------------------------------------------------------------------
@dataclass
class Redis:
    port: int
    managed: Managed

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def start_redis(sup: Supervisor, redis_server: str, run_dir: Path) -> Redis:
    d = run_dir / "redis"
    d.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [
        redis_server,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(d),
        "--save", "",
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--daemonize", "no",
        "--logfile", str(d / "redis.log"),
    ]  # fmt: skip
    managed = sup.start("redis", argv)
    wait_until(lambda: port_open(port) or not managed.alive(), 15, "redis-server to listen")
    if not managed.alive():
        raise HarnessError(f"redis-server did not start: {(d / 'redis.log').read_text()[-1500:]}")
    return Redis(port, managed)


# --- config -------------------------------------------------------------------------------------
def write_config(run_dir: Path, mock_base: str, slow_base: str) -> Path:
    """The repo's gateway.yaml with the upstreams pointed at the mocks (see module docstring)."""
    src = REPO / "config" / "gateway.yaml"
    try:
        base: dict[str, Any] = yaml.safe_load(src.read_text()) or {}
    except (OSError, yaml.YAMLError):
        base = {}
    cfg = copy.deepcopy(base)
    ups = cfg.get("upstreams") or {}

    def upstream(name: str, kind: str, url: str) -> dict[str, Any]:
        u = dict(ups.get(name) or {})
        u.update(kind=kind, base_url=url, api_key="bench-dummy-upstream-key", retries=0)
        u.setdefault("timeout_s", 300)
        return u

    cfg["upstreams"] = {
        "openai": upstream("openai", "openai", f"{mock_base}/v1"),
        "gemini": upstream("gemini", "gemini", f"{mock_base}/v1beta"),
        "slow": upstream("openai", "openai", f"{slow_base}/v1")
        | {"max_concurrency": SLOW_MAX_CONCURRENCY, "timeout_s": 300},
    }
    models = dict(cfg.get("models") or FALLBACK_MODELS)
    for name, spec in FALLBACK_MODELS.items():
        models.setdefault(name, spec)
    models[SLOW_MODEL] = copy.deepcopy(models[MODEL]) | {"upstream": "slow"}
    cfg["models"] = models
    cfg.setdefault("default_model", MODEL)
    path = run_dir / "gateway.yaml"
    path.write_text("# generated by bench/gateway.py\n" + yaml.safe_dump(cfg, sort_keys=False))
    return path


# --- the gateway --------------------------------------------------------------------------------
@dataclass
class Gateway:
    port: int
    env: dict[str, str]
    config: Path
    managed: Managed | None = None
    token: str = ""
    key_source: str = ""
    workers: int = 1  # `imagegate serve --workers`: gateway processes sharing the port

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tree(self) -> list[int]:
        return self.managed.tree() if self.managed else []

    @property
    def spool_dir(self) -> Path:
        """Where the gateway spools large bodies: `limits.spool_dir`, else `<data_dir>/spool`."""
        try:
            cfg = yaml.safe_load(self.config.read_text()) or {}
        except (OSError, yaml.YAMLError):
            cfg = {}
        configured = (cfg.get("limits") or {}).get("spool_dir")
        return Path(configured or Path(self.env["IMAGEGATE_DATA_DIR"]) / "spool")

    def open_files_limit(self) -> str:
        """The soft and hard RLIMIT_NOFILE of the gateway's processes (/proc/<pid>/limits)."""
        out = set()
        for pid in self.tree():
            try:
                for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
                    if line.startswith("Max open files"):
                        out.add("/".join(line.split()[3:5]))
            except OSError:
                continue
        return ", ".join(sorted(out)) or "?"

    def runtime(self) -> str:
        """Which event loop and HTTP parser the running server really loaded."""
        if not self.managed:
            return "not running"
        libs = " ".join(sorted(set().union(*(loaded_libraries(p) for p in self.tree()))))
        loop = "uvloop" if "/uvloop/" in libs else "asyncio"
        parser = "httptools" if "/httptools/" in libs else "h11"
        return f"{loop} + {parser} ({len(self.tree())} process(es))"


def gateway_env(run_dir: Path, config: Path, redis: Redis, mock_base: str) -> dict[str, str]:
    data = run_dir / "gateway-data"
    data.mkdir(parents=True, exist_ok=True)
    return _env_base() | {
        "IMAGEGATE_CONFIG": str(config),
        "IMAGEGATE_REDIS_URL": redis.url,
        "IMAGEGATE_DATA_DIR": str(data),
        "IMAGEGATE_ADMIN_KEY": "bench-admin-" + secrets.token_hex(16),
        "IMAGEGATE_ALLOW_PRIVATE_URLS": "true",
        "IMAGEGATE_LOG_LEVEL": "info",
        "IMAGEGATE_OPENAI_BASE_URL": f"{mock_base}/v1",
        "IMAGEGATE_OPENAI_API_KEY": "bench-dummy-upstream-key",
        "IMAGEGATE_GEMINI_BASE_URL": f"{mock_base}/v1beta",
        "IMAGEGATE_GEMINI_API_KEY": "bench-dummy-upstream-key",
    }


def get_status(port: int, path: str, timeout: float = 2.0) -> int:
    """Status of a GET on 127.0.0.1:`port` (0 when nothing answers)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        return 0
    finally:
        conn.close()


def start_gateway(sup: Supervisor, gw: Gateway) -> None:
    """Start `imagegate serve` and wait until /readyz (or /healthz) answers 200."""
    argv = [
        *imagegate_argv(),
        "serve",
        "--host", "127.0.0.1",
        "--port", str(gw.port),
        "--config", str(gw.config),
        "--workers", str(gw.workers),
    ]  # fmt: skip
    gw.managed = sup.start("gateway", argv, env=gw.env, cwd=REPO)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not gw.managed.alive():
            raise HarnessError(f"imagegate serve exited:\n{gw.managed.log_tail()}")
        if port_open(gw.port):
            status = get_status(gw.port, "/readyz")
            if status == 200 or (status == 404 and get_status(gw.port, "/healthz") == 200):
                return
        time.sleep(0.1)
    raise HarnessError(f"imagegate serve not ready after 60s:\n{gw.managed.log_tail()}")


def restart_gateway(sup: Supervisor, gw: Gateway) -> None:
    """A fresh process, so a memory measurement does not inherit earlier scenarios' heap."""
    if gw.managed:
        sup.stop(gw.managed)
    start_gateway(sup, gw)


def create_key(gw: Gateway) -> None:
    """A key with effectively unlimited credits, rpm and concurrency: limits are checked on
    every request (that cost is measured) but never reject one (that would not be)."""
    argv = [
        *imagegate_argv(),
        "keys", "create",
        "--name", "bench",
        "--credits", "100000000",
        "--rpm", "100000000",
        "--max-concurrency", "100000",
        "--json",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=gw.env, cwd=REPO)
    if done.returncode == 0 and "{" in done.stdout:
        data = json.loads(done.stdout[done.stdout.index("{") : done.stdout.rindex("}") + 1])
        gw.token, gw.key_source = str(data["key"]), "imagegate keys create"
        return
    # fall back to the admin API of the running gateway
    payload = {"name": "bench", "credits": 100000000, "rpm": 100000000, "max_concurrency": 100000}
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        conn.request(
            "POST",
            "/admin/keys",
            body=json.dumps(payload),
            headers={
                "Authorization": f"Bearer {gw.env['IMAGEGATE_ADMIN_KEY']}",
                "Content-Type": "application/json",
            },
        )
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status not in (200, 201):
        raise HarnessError(
            f"could not create an API key: CLI exited {done.returncode} "
            f"({(done.stderr or done.stdout)[-500:]}); admin API answered {resp.status}"
        )
    gw.token, gw.key_source = str(json.loads(body)["key"]), "POST /admin/keys"


def post(port: int, path: str, body: bytes, content_type: str, token: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(
            "POST",
            path,
            body=body,
            headers={"Content-Type": content_type, "Authorization": f"Bearer {token}"},
        )
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def verify_at(
    port: int, token: str, body: bytes, content_type: str, what: str, log: str = ""
) -> None:
    """One request must succeed before anything is timed: a fast 4xx/5xx would otherwise be
    reported as a fast gateway. Applies to the gateway and to the peer alike."""
    status, data = post(port, "/v1/images/edits", body, content_type, token)
    try:
        ok = status == 200 and bool(json.loads(data).get("data"))
    except (ValueError, AttributeError):
        ok = False
    if not ok:
        raise HarnessError(f"{what} answered {status}: {data[:400]!r}\nlog:\n{log}")


def verify_edit(gw: Gateway, body: bytes, content_type: str, what: str) -> None:
    log = gw.managed.log_tail(1500) if gw.managed else ""
    verify_at(gw.port, gw.token, body, content_type, f"gateway {what}", log)


def verify_multipart(gw: Gateway, image: bytes, model: str = MODEL) -> None:
    body, ctype = multipart_body(image, model)
    verify_edit(gw, body, ctype, f"multipart edit ({model}, {len(image)} B)")


def verify_multipart_at(
    port: int, token: str, image: bytes, model: str, what: str, log: str = ""
) -> None:
    body, ctype = multipart_body(image, model)
    verify_at(port, token, body, ctype, f"{what} ({model}, {len(image)} B)", log)
