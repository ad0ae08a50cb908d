"""Many observations added to a prometheus_client histogram at once: one ``inc`` per bucket that moved.

Why: each ``observe`` takes a lock and, in multiprocess mode, writes a
memory-mapped file; the metrics add a second's worth of request latencies
in one go instead. prometheus_client has no public bulk observe, so this
reads a histogram child's private ``_upper_bounds``, ``_buckets`` and
``_sum``: prometheus-client is pinned to the release line the tests cover,
and :func:`check_internals` (run by ``monitoring.metrics.install`` and by the
tests) fails loudly when one of them is gone. Can go when prometheus_client
offers a bulk observe.
"""

from __future__ import annotations

import numpy as np
from prometheus_client import Histogram

#: What a histogram child must have for :func:`observe_many`.
INTERNALS = ("_upper_bounds", "_buckets", "_sum")


def check_internals() -> None:
    """Raise RuntimeError when the installed prometheus_client's histograms lack what observe_many uses."""
    child = Histogram("bulk_observe_probe", "A probe of prometheus_client's internals.", registry=None)
    missing = [name for name in INTERNALS if not hasattr(child, name)]
    if missing:
        raise RuntimeError(
            f"prometheus_client's Histogram no longer has {', '.join(missing)}, which monitoring.bulk_observe "
            "relies on: install the prometheus-client release pinned in pyproject.toml."
        )


def observe_many(histogram: Histogram, amounts: list[float], scale: float = 1.0) -> None:
    """``histogram.observe(amount * scale)`` for every amount, with one ``inc`` per bucket that moved.

    prometheus_client keeps a histogram child's buckets uncumulated, one
    value per upper bound, and its sum in another: the same values its
    ``observe`` moves (``tests/monitoring/test_metrics.py`` checks that both
    ways give the same exposition).
    """
    values_s = np.asarray(amounts, dtype=np.float64) * scale
    bounds = histogram._upper_bounds
    # Prometheus buckets are "less than or equal": the first bound >= the value.
    counts = np.bincount(np.searchsorted(bounds, values_s, side="left"), minlength=len(bounds))
    histogram._sum.inc(float(values_s.sum()))
    buckets = histogram._buckets
    for index in np.flatnonzero(counts).tolist():
        buckets[index].inc(int(counts[index]))
