"""The gateway's Prometheus metrics, kept by `prometheus_client`.

One process (`imagegate serve`, the tests) keeps them in memory. A process group
(`imagegate serve --workers N`) uses prometheus_client's multiprocess mode: every process writes
its values to memory-mapped files in `PROMETHEUS_MULTIPROC_DIR`, and `/metrics` sums the files
of the whole group, so each scrape returns the group's totals whichever process answers it.
`multiprocess_dir_for_group` prepares that directory in the parent before it forks, and
`process_exited` does the bookkeeping when a child ends (docs/OPERATIONS.md, "Metrics").

The wrappers keep the call sites short (`metrics.requests.inc(model=m, status="ok")`) and cache
each label set's child, because `labels()` costs more than the increment itself.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest, values
from prometheus_client import Counter as _Counter
from prometheus_client import Gauge as _Gauge
from prometheus_client import Histogram as _Histogram
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                   120, 300)  # fmt: skip

# `*_created` series only say when a process first saw a label set; they double the output.
prometheus_client.disable_created_metrics()


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def multiprocess_dir_for_group() -> tuple[Path, bool]:
    """Set up `PROMETHEUS_MULTIPROC_DIR` for a process group about to fork; call it in the
    parent before the first fork. An operator's directory is emptied (files of an earlier run
    would be summed in); without one a private temporary directory is made. Returns the
    directory and whether the caller owns it (removes it at exit)."""
    given = multiprocess_dir()
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        owned = False
    else:
        path = Path(tempfile.mkdtemp(prefix="imagegate-metrics-"))
        os.environ[MULTIPROC_ENV] = str(path)
        owned = True
    _use_multiprocess_values()
    return path, owned


def process_exited(pid: int) -> None:
    """A process of the group ended: drop its live-gauge files (its counters stay summed)."""
    path = multiprocess_dir()
    if path:
        mark_process_dead(pid, path)


def remove_group_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    if os.environ.get(MULTIPROC_ENV) == str(path):
        del os.environ[MULTIPROC_ENV]


def _use_multiprocess_values() -> None:
    # prometheus_client picks its value class when it is first imported; re-pick it in case it
    # was imported before the directory was set (the metrics are created after this, per process).
    if multiprocess_dir() and not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.get_value_class()


class _Labeled:
    """A metric with labels whose children are looked up once per label set."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: _Counter | _Histogram | _Gauge) -> None:
        self._metric = metric
        self._children: dict[tuple[tuple[str, str], ...], Any] = {}

    def _child(self, labels: dict[str, str]) -> Any:
        key = tuple(labels.items())
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._metric.labels(**labels)
        return child


class Counter(_Labeled):
    __slots__ = ()

    def inc(self, amount: float = 1, **labels: str) -> None:
        self._child(labels).inc(amount)


class Histogram(_Labeled):
    __slots__ = ()

    def observe(self, value: float, **labels: str) -> None:
        self._child(labels).observe(value)


class LabeledGauge(_Labeled):
    __slots__ = ()

    def set(self, value: float, **labels: str) -> None:
        self._child(labels).set(value)


class Metrics:
    """Every metric the gateway exports; names and labels are listed in docs/OPERATIONS.md."""

    def __init__(self) -> None:
        _use_multiprocess_values()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            _Counter("imagegate_requests", "Edit requests by model and status",
                     ["model", "status"], registry=r)
        )  # fmt: skip
        self.gateway_latency = Histogram(
            _Histogram("imagegate_gateway_seconds",
                       "Time spent in the gateway itself (excl. upstream)", ["model"],
                       buckets=LATENCY_BUCKETS, registry=r)
        )  # fmt: skip
        self.upstream_latency = Histogram(
            _Histogram("imagegate_upstream_seconds", "Upstream call latency", ["model"],
                       buckets=LATENCY_BUCKETS, registry=r)
        )  # fmt: skip
        self.credits = Counter(
            _Counter("imagegate_credits_charged", "Credits charged, by model", ["model"],
                     registry=r)
        )  # fmt: skip
        self.rejections = Counter(
            _Counter("imagegate_rate_limit_rejections", "429s by reason (rpm or concurrency)",
                     ["reason"], registry=r)
        )  # fmt: skip
        self.callbacks = Counter(
            _Counter("imagegate_callback_deliveries", "Callback outcomes", ["outcome"],
                     registry=r)
        )  # fmt: skip
        self.tasks = Counter(
            _Counter("imagegate_tasks", "Async tasks finished, by status", ["status"], registry=r)
        )
        # Set from the store by whichever process is scraped: the latest value is the truth.
        self.queue_depth = _Gauge(
            "imagegate_task_queue_depth", "Async tasks waiting", registry=r,
            multiprocess_mode="mostrecent",
        )  # fmt: skip
        self.upstream_attempts = Counter(
            _Counter("imagegate_upstream_attempts", "Upstream attempts by channel and outcome",
                     ["channel", "outcome"], registry=r)
        )  # fmt: skip
        # Channel health is per process; the latest state any process reported is shown.
        self.channel_state = LabeledGauge(
            _Gauge("imagegate_channel_state",
                   "Channel state: 0 closed, 1 half_open, 2 open, 3 disabled", ["channel"],
                   registry=r, multiprocess_mode="mostrecent")
        )  # fmt: skip

    def render(self) -> bytes:
        """The text exposition of this process, or of the whole process group."""
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        group = CollectorRegistry()
        MultiProcessCollector(group, path)
        return generate_latest(group)
