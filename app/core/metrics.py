"""A small in-process Prometheus registry: counters, gauges (by callback) and histograms.

Kept dependency-free and cheap (a dict update per observation) because it sits on the hot
path; `/metrics` renders the text exposition format on demand.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable

Labels = tuple[tuple[str, str], ...]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                   120, 300)  # fmt: skip


def _labels(labels: dict[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


def _fmt(labels: Labels, extra: Iterable[tuple[str, str]] = ()) -> str:
    items = list(labels) + list(extra)
    if not items:
        return ""
    body = ",".join(f'{k}="{str(v).replace(chr(34), "")}"' for k, v in items)
    return "{" + body + "}"


class Counter:
    def __init__(self, name: str, help: str) -> None:
        self.name, self.help = name, help
        self.values: dict[Labels, float] = defaultdict(float)

    def inc(self, amount: float = 1, **labels: str) -> None:
        self.values[_labels(labels)] += amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        lines += [f"{self.name}{_fmt(k)} {v:g}" for k, v in self.values.items()]
        return lines


class Histogram:
    def __init__(self, name: str, help: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.name, self.help, self.buckets = name, help, buckets
        self.counts: dict[Labels, list[int]] = {}
        self.sums: dict[Labels, float] = defaultdict(float)

    def observe(self, value: float, **labels: str) -> None:
        key = _labels(labels)
        counts = self.counts.get(key)
        if counts is None:
            counts = self.counts[key] = [0] * (len(self.buckets) + 1)
        counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sums[key] += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, counts in self.counts.items():
            total = 0
            for bound, c in zip(self.buckets, counts, strict=False):
                total += c
                lines.append(f"{self.name}_bucket{_fmt(key, [('le', f'{bound:g}')])} {total}")
            total += counts[-1]
            lines.append(f"{self.name}_bucket{_fmt(key, [('le', '+Inf')])} {total}")
            lines.append(f"{self.name}_sum{_fmt(key)} {self.sums[key]:g}")
            lines.append(f"{self.name}_count{_fmt(key)} {total}")
        return lines


class Gauge:
    """A gauge read when /metrics is scraped (e.g. queue depth from the store)."""

    def __init__(self, name: str, help: str) -> None:
        self.name, self.help = name, help
        self.value: float = 0
        self.reader: Callable[[], float] | None = None

    def set(self, value: float) -> None:
        self.value = value

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge",
                f"{self.name} {self.value:g}"]  # fmt: skip


class Metrics:
    def __init__(self) -> None:
        self.requests = Counter("imagegate_requests_total", "Edit requests by model and status")
        self.gateway_latency = Histogram(
            "imagegate_gateway_seconds", "Time spent in the gateway itself (excl. upstream)"
        )
        self.upstream_latency = Histogram("imagegate_upstream_seconds", "Upstream call latency")
        self.credits = Counter("imagegate_credits_charged_total", "Credits charged, by model")
        self.rejections = Counter(
            "imagegate_rate_limit_rejections_total", "429s by reason (rpm or concurrency)"
        )
        self.callbacks = Counter("imagegate_callback_deliveries_total", "Callback outcomes")
        self.tasks = Counter("imagegate_tasks_total", "Async tasks finished, by status")
        self.queue_depth = Gauge("imagegate_task_queue_depth", "Async tasks waiting")

    def render(self) -> str:
        parts: list[str] = []
        for m in (self.requests, self.gateway_latency, self.upstream_latency, self.credits,
                  self.rejections, self.callbacks, self.tasks, self.queue_depth):  # fmt: skip
            parts.extend(m.render())
        return "\n".join(parts) + "\n"
