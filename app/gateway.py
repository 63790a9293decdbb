"""The composition root: builds every part once from settings and config, and runs the
background loops (reservation sweeper, result retention, task workers).

Everything per-process and reusable lives here so no request pays for it: the store client
and its Lua scripts, the upstream channels and their caller, the adapters, the guarded fetcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from app.adapters import build_adapters
from app.core import tracing
from app.core.config import GatewayConfig, Settings, load_config
from app.core.logging import fields, get_logger
from app.core.memory import HeapTrimmer
from app.core.metrics import Metrics
from app.domain.audit import AuditLog
from app.domain.keys import KeyAdmin
from app.domain.metering import Meter
from app.media import spool
from app.media.fetch import GuardedFetcher
from app.results import Results
from app.service import EditService
from app.storage import open_storage
from app.store import open_store
from app.store.base import Store
from app.tasks.admin import TaskAdmin
from app.tasks.delivery import CallbackDeliverer
from app.tasks.inputs import TaskInputs
from app.tasks.queue import TaskQueue
from app.tasks.worker import TaskWorker
from app.upstream import ChannelSet, UpstreamCaller, build_channels

log = get_logger("imagegate")
# Inputs outlive any task that could still run them only when something went wrong (the
# queue's own records expire after 7 days); the sweeper removes such leftovers.
_INPUTS_MAX_AGE_S = 7 * 86400


def ensure_admin_key(settings: Settings) -> str:
    """IMAGEGATE_ADMIN_KEY, or one generated on first start into the data dir (mode 0600)."""
    if settings.admin_key:
        return settings.admin_key
    path = Path(settings.data_dir) / "admin_key"
    if path.is_file():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = "igadm-" + secrets.token_urlsafe(32)
    fd = path.open("x") if not path.exists() else path.open("w")
    with fd:
        fd.write(key + "\n")
    path.chmod(0o600)
    log.warning("admin.key.generated", extra=fields(path=str(path.resolve())))
    return key


def open_task_queue(redis_url: str | None, data_dir: Path, *, shards: int = 8) -> TaskQueue:
    if redis_url:
        from app.tasks.redis_queue import RedisTaskQueue

        return RedisTaskQueue.from_url(redis_url, shards=shards)
    from app.tasks.sqlite_queue import SQLiteTaskQueue

    return SQLiteTaskQueue(data_dir / "tasks.db")


class _TaskMetrics:
    """Task and delivery outcomes into the Prometheus registry."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def task_finished(self, status: str) -> None:
        self.metrics.tasks.inc(status=status)

    def delivery(self, outcome: str) -> None:
        self.metrics.callbacks.inc(outcome=outcome)


class Gateway:
    def __init__(self, settings: Settings, config: GatewayConfig | None = None) -> None:
        self.settings = settings
        # Gives a burst's freed upload buffers back to the OS (app/core/memory.py).
        self.heap = HeapTrimmer(enabled=settings.malloc_tuning)
        self.config = config or load_config(settings)
        self.metrics = Metrics()
        self.data_dir = Path(settings.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Large image bytes wait here during a request (app/media/spool.py); set at start-up.
        self.spool_dir = spool.spool_dir(self.config.limits, self.data_dir)
        self.admin_key = ensure_admin_key(settings)
        self.store: Store = tracing.traced(open_store(settings.redis_url, self.data_dir), "store")
        self.adapters = build_adapters(self.config)
        self.channels = build_channels(self.config)
        self.caller = UpstreamCaller(self.channels, self.config.routing, self.metrics)
        self.fetcher = GuardedFetcher(
            allow_private=settings.allow_private_urls,
            timeout_s=self.config.limits.fetch_timeout_s,
            max_redirects=self.config.limits.fetch_max_redirects,
        )
        self.storage = open_storage(self.config.storage, self.data_dir)
        self.results = Results(self.storage, self.config.storage, self.config.results.retention_s)
        # Local files are invisible to replicas on other machines that share the Redis queue.
        inline = self.storage.kind == "local" and bool(settings.redis_url)
        self.inputs = TaskInputs(self.storage, inline=inline)
        self.meter = Meter(self.store, self.config, metrics=self.metrics)
        self.keys = KeyAdmin(self.store, set(self.config.models))
        self.tasks: TaskQueue = tracing.traced(
            open_task_queue(settings.redis_url, self.data_dir, shards=self.config.tasks.shards),
            "tasks",
        )
        self.service = EditService(
            config=self.config,
            adapters=self.adapters,
            caller=self.caller,
            meter=self.meter,
            fetcher=self.fetcher,
            results=self.results,
            metrics=self.metrics,
            tasks=self.tasks,
            inputs=self.inputs,
        )
        task_metrics = _TaskMetrics(self.metrics)
        self.deliverer = CallbackDeliverer(
            self.tasks, self.fetcher, self._webhook_secret, self.config.callbacks,
            metrics=task_metrics,
        )  # fmt: skip
        self.audit = AuditLog(self.store)
        self.task_admin = TaskAdmin(self.tasks, self.deliverer, self.audit)
        workers = settings.workers if settings.workers is not None else self.config.tasks.workers
        self.worker: TaskWorker | None = None
        if workers > 0:
            self.worker = TaskWorker(
                self.tasks, self.service.run_task, self.deliverer,
                worker_id=f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}",
                lease_s=self.config.tasks.lease_s, concurrency=workers,
                on_lease=self._extend_reservation, on_finish=self._drop_inputs,
                metrics=task_metrics,
                shutdown_grace_s=self.config.server.shutdown_grace_s,
            )  # fmt: skip
        self._tasks: list[asyncio.Task[Any]] = []
        self._stop = asyncio.Event()
        self._stop_claiming = asyncio.Event()  # set first on SIGTERM: workers drain
        self.draining = False  # SIGTERM seen: /readyz answers 503 so balancers move on
        # How `reload` reads the config again; `imagegate serve` sets one that also points
        # credential-less upstreams at its simulator.
        self.config_loader: Callable[[], GatewayConfig] = lambda: load_config(settings)
        self._retired: list[asyncio.Task[Any]] = []

    # --- config reload (SIGHUP, POST /admin/reload)
    def reload(self) -> GatewayConfig:
        """Read and validate the config again and switch to it; raises `ConfigError` (with the
        start-up message) and keeps the running config when the file is bad.

        Prices, models, upstreams, limits, defaults, callbacks and retention change at once
        (requests already in flight finish on what they started with). Process-level settings
        -- `tasks.workers`, `tasks.shards`, `tasks.lease_s`, `server.*` -- need a restart."""
        config = self.config_loader()
        old = self.config
        adapters = build_adapters(config)
        channels = build_channels(config)
        caller = UpstreamCaller(channels, config.routing, self.metrics)
        retired = self.channels
        self.config = config
        self.adapters = adapters
        self.channels = channels
        self.caller = caller
        self.meter.config = config
        self.keys.known_models = set(config.models)
        self.service.config = config
        self.service.adapters = adapters
        self.service.caller = caller
        self.deliverer.config = config.callbacks
        self.results.retention_s = config.results.retention_s
        # The old channels serve the requests already on them, then close. (Channel health
        # -- cooldowns, open circuits -- starts afresh with the new config.)
        grace = max((u.timeout_s for u in old.upstreams.values()), default=0) + 5
        self._retired.append(asyncio.create_task(self._close_later(retired, grace)))
        restart = [
            name
            for name, a, b in (
                ("tasks.workers", old.tasks.workers, config.tasks.workers),
                ("tasks.shards", old.tasks.shards, config.tasks.shards),
                ("tasks.lease_s", old.tasks.lease_s, config.tasks.lease_s),
                ("server", old.server, config.server),
            )
            if a != b
        ]
        log.info("config.reloaded", extra=fields(models=list(config.models),
                                                 needs_restart=restart))  # fmt: skip
        return config

    @staticmethod
    async def _close_later(channels: ChannelSet, delay: float) -> None:
        await asyncio.sleep(delay)
        with contextlib.suppress(Exception):
            await channels.aclose()

    def begin_shutdown(self) -> None:
        """SIGTERM: report not ready, stop claiming tasks (running ones get the grace period,
        then their leases are handed back) -- while the server drains its requests."""
        self.draining = True
        self._stop_claiming.set()

    async def _webhook_secret(self, key_id: str) -> str | None:
        key = await self.store.get_key(key_id)
        return key.webhook_secret if key else None

    async def _extend_reservation(self, task: Any, until: float) -> str:
        return await self.store.extend(
            task.id, task.key_id, until + self.config.metering.reservation_ttl_s
        )

    async def _drop_inputs(self, task: Any) -> None:
        await self.inputs.drop(task.id)

    async def _sweep_files(self) -> None:
        await self.results.sweep()
        await self.inputs.sweep(_INPUTS_MAX_AGE_S)

    async def start(self, *, workers: bool = True) -> None:
        self._stop.clear()
        self._stop_claiming.clear()
        spool.prepare(self.spool_dir)  # each process sweeps what a crashed one left
        if workers and self.worker is not None:
            self._tasks.append(asyncio.create_task(self.worker.run(self._stop_claiming)))
        self._tasks.append(asyncio.create_task(self.deliverer.run(self._stop)))
        self._tasks.append(asyncio.create_task(self._every(
            self.config.metering.sweep_interval_s, self.meter.sweep)))  # fmt: skip
        self._tasks.append(asyncio.create_task(self._every(
            self.config.results.sweep_interval_s, self._sweep_files)))  # fmt: skip

    async def _every(self, interval: float, fn: Callable[[], Awaitable[object]]) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=interval)
            if self._stop.is_set():
                return
            try:
                await fn()
            except Exception:
                log.exception("background.failed", extra=fields(job=getattr(fn, "__name__", "")))

    async def refresh_gauges(self) -> None:
        """Values read at scrape time."""
        try:
            self.metrics.queue_depth.set(await self.tasks.queue_depth())
        except Exception:
            log.warning("metrics.queue_depth.failed")

    async def aclose(self) -> None:
        self.heap.cancel()
        self._stop_claiming.set()
        self._stop.set()
        # Workers drain (or release) their tasks on stop; give them their grace period.
        grace = self.config.server.shutdown_grace_s + 5
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), grace)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        self._tasks.clear()
        await self.tasks.close()
        await self.channels.aclose()
        for t in self._retired:
            t.cancel()
        await self.fetcher.aclose()
        await self.store.close()
        await self.storage.close()
