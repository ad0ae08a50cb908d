"""One second's latencies, summarised so that several processes' summaries can be merged."""

from __future__ import annotations

from typing import Any

import numpy as np

# Evenly spaced quantiles of each second's latencies, sent along so that the
# dashboard can merge several processes' distributions.
LATENCY_QUANTILES = 32


def latency_summary(latencies: list[float], count: int | None = None) -> dict[str, Any]:
    """p50/p95/p99 and evenly spaced quantiles of one second's latencies, in milliseconds.

    ``latencies`` may be a sample; ``count`` is how many requests it was drawn from.
    """
    if not latencies:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None, "quantiles": []}
    values = np.asarray(latencies, dtype=np.float64)
    p50, p95, p99 = np.percentile(values, (50, 95, 99)).tolist()
    # The midpoints of LATENCY_QUANTILES equal shares, each standing for
    # count / LATENCY_QUANTILES requests when distributions are merged.
    points = min(LATENCY_QUANTILES, values.size)
    quantiles = np.quantile(values, (np.arange(points) + 0.5) / points).tolist()
    return {
        "count": int(values.size if count is None else max(count, values.size)),
        "p50": round(p50, 3),
        "p95": round(p95, 3),
        "p99": round(p99, 3),
        "max": round(float(values.max()), 3),
        "quantiles": [round(q, 3) for q in quantiles],
    }
