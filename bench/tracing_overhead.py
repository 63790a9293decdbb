"""What tracing costs when `OTEL_EXPORTER_OTLP_ENDPOINT` is unset: the calls that stay in the
hot path (`attempt` and `set_status` per upstream attempt) against the same loop without them.
The server middleware and the store wrapper are not installed when off.

    python -m bench.tracing_overhead
"""

from __future__ import annotations

import os
import statistics
import time

from app.core import tracing

N = 200_000


def bare() -> float:
    t0 = time.perf_counter()
    for i in range(N):
        status = 200 + (i & 1)
        del status
    return (time.perf_counter() - t0) / N


def with_calls() -> float:
    t0 = time.perf_counter()
    for i in range(N):
        url = "http://upstream/v1/images/edits"
        with tracing.attempt("openai", "gpt-image-1", 1, "POST", url) as span:
            status = 200 + (i & 1)
        tracing.set_status(span, status)
    return (time.perf_counter() - t0) / N


def main() -> None:
    assert not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"), "measure with tracing off"
    assert tracing.setup() is False
    a, b = [], []
    for _ in range(5):  # interleaved rounds
        a.append(bare())
        b.append(with_calls())
    extra = (statistics.median(b) - statistics.median(a)) * 1e9
    print(f"tracing off: {extra:.0f} ns added per upstream attempt "
          f"(median of 5 interleaved rounds of {N:,})")  # fmt: skip


if __name__ == "__main__":
    main()
