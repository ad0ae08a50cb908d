"""Prometheus metrics of the shadow comparisons (``monitoring.metrics`` holds the others; names alike).

Labels: ``model``, ``version`` (the version that answered the clients),
``shadow_version``, and a drop's bounded ``reason``
(``inference.rollout.shadow.DropReason``). Counted when the recorder writes
its buckets, so they lag the requests by at most ``PLATFORM_SHADOW_FLUSH_S``.
The agreement rate is ``rate(platform_shadow_agreed_rows_total) /
rate(platform_shadow_rows_total)``, the mean absolute difference
``rate(platform_shadow_abs_diff_total) / rate(platform_shadow_rows_total)``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from ..metrics import NAMESPACE
from .aggregate import Bucket, PairMinute

_PAIR = ["model", "version", "shadow_version"]

COMPARISONS = Counter("shadow_comparisons", "Requests whose shadow answer was compared with the client's.", _PAIR,
                      namespace=NAMESPACE)
ROWS = Counter("shadow_rows", "Input rows compared between the answering version and the shadow.", _PAIR,
               namespace=NAMESPACE)
AGREED_ROWS = Counter("shadow_agreed_rows", "Compared rows on which the shadow agreed (same label, or values "
                      "within 1e-6).", _PAIR, namespace=NAMESPACE)
ABS_DIFF = Counter("shadow_abs_diff", "Sum over compared rows of the largest absolute difference between the two "
                   "versions' probabilities or values.", _PAIR, namespace=NAMESPACE)
MAX_ABS_DIFF = Gauge("shadow_max_abs_diff", "The largest absolute difference of a row in the last minute written.",
                     _PAIR, namespace=NAMESPACE, multiprocess_mode="max")
MODEL_SECONDS = Counter("shadow_model_seconds", "Time in the batcher (queue and model call) of compared requests, "
                        "by role: the answering version (primary) or the shadow.", [*_PAIR, "role"],
                        namespace=NAMESPACE)
FAILURES = Counter("shadow_failures", "Copies of requests the shadow failed on; the clients were not affected.",
                   _PAIR, namespace=NAMESPACE)
DROPPED = Counter("shadow_dropped", "Copies of requests not run on the shadow, to spare the serving version.",
                  [*_PAIR, "reason"], namespace=NAMESPACE)


def observe(key: PairMinute, bucket: Bucket) -> None:
    """Count one bucket (called by the recorder's writer thread)."""
    labels = (key.model, str(key.primary_version), str(key.shadow_version))
    if bucket.requests:
        COMPARISONS.labels(*labels).inc(bucket.requests)
        ROWS.labels(*labels).inc(bucket.rows)
        AGREED_ROWS.labels(*labels).inc(bucket.agreed_rows)
        ABS_DIFF.labels(*labels).inc(bucket.sum_abs_diff)
        MAX_ABS_DIFF.labels(*labels).set(bucket.max_abs_diff)
        MODEL_SECONDS.labels(*labels, "primary").inc(bucket.primary_ms_sum / 1000.0)
        MODEL_SECONDS.labels(*labels, "shadow").inc(bucket.shadow_ms_sum / 1000.0)
    if bucket.failed:
        FAILURES.labels(*labels).inc(bucket.failed)
    for reason, count in bucket.drop_reasons.items():
        DROPPED.labels(*labels, reason).inc(count)
