"""Metrics of the deployment's shape: replaced server processes, and rate limits that fell back to one process.

Kept apart from ``monitoring.metrics`` because the process that supervises
the workers (``platform_core.server.workers``) counts replacements itself:
it imports prometheus_client once ``PROMETHEUS_MULTIPROC_DIR`` is set and
must not load the serving metrics, the inference package or Django with it.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

NAMESPACE = "platform"

WORKER_RESTARTS = Counter(
    "worker_restarts_total",
    "Server processes that exited while the server was not stopping and were replaced, by how they ended "
    "(signal: killed by a signal; exit: exited on their own).",
    ["cause"], namespace=NAMESPACE,
)

RATE_LIMITS_LOCAL = Gauge(
    "rate_limits_local_processes",
    "Server processes enforcing API-key rate limits per process because the Redis that holds the "
    "deployment-wide limits does not answer (0 when every process uses Redis, or no REDIS_URL is set).",
    namespace=NAMESPACE, multiprocess_mode="livesum",
)
