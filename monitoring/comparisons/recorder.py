"""The comparison recorder: shadow reports added up in memory on the event loop, written by a thread.

Every ``flush_s`` seconds (and at shutdown) the writer thread takes the
buckets, counts them in the metrics and writes them to the database
(``monitoring.comparisons.store``): a few queries per version pair, however
many requests were compared. A write that fails (the database is down) puts
the buckets back, to be added to the next write; so a process that cannot
write for long holds at most one bucket per version pair and minute.
"""

from __future__ import annotations

import logging
import threading

from django.db import close_old_connections

from inference.rollout.shadow import ShadowReport

from . import metrics, store
from .aggregate import Aggregator, Bucket, PairMinute

logger = logging.getLogger(__name__)


class ComparisonRecorder:
    """Receives shadow reports (``observe``) and writes their per-minute sums every ``flush_s`` seconds."""

    def __init__(self, *, flush_s: float, samples_per_minute: int, samples_kept: int) -> None:
        if flush_s <= 0:
            raise ValueError(f"flush_s must be a positive number of seconds, not {flush_s!r}.")
        self.flush_s = flush_s
        self.samples_kept = samples_kept
        self._aggregator = Aggregator(samples_per_minute=samples_per_minute)
        self._unwritten: dict[PairMinute, Bucket] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def observe(self, report: ShadowReport) -> None:
        """Called on the event loop for every copy of a request: compared, failed or dropped."""
        with self._lock:
            self._aggregator.add(report)
        if self._thread is None:
            self.start()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="shadow-comparisons", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            self.flush()
        close_old_connections()

    def flush(self) -> None:
        """Write what was added since the last write; runs in a thread that may use the database."""
        with self._write_lock:
            with self._lock:
                taken = self._aggregator.take()
            for key, bucket in taken.items():
                metrics.observe(key, bucket)
            pending = _merged(self._unwritten, taken)
            if not pending:
                return
            try:
                close_old_connections()
                store.write(pending, kept=self.samples_kept)
            except Exception:
                logger.exception("Could not write %d shadow comparisons; trying again in %g s", len(pending),
                                 self.flush_s)
                self._unwritten = pending
            else:
                self._unwritten = {}

    def shutdown(self) -> None:
        """Stop the writer thread and write what is left; called once at the process's shutdown."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.flush_s + 5)
        self.flush()


def _merged(older: dict[PairMinute, Bucket], newer: dict[PairMinute, Bucket]) -> dict[PairMinute, Bucket]:
    """``older`` (buckets a failed write put back) with ``newer`` added."""
    if not older:
        return newer
    merged = dict(older)
    for key, bucket in newer.items():
        kept = merged.get(key)
        if kept is None:
            merged[key] = bucket
            continue
        for name in ("requests", "rows", "agreed_rows", "sum_abs_diff", "primary_ms_sum", "shadow_ms_sum", "failed",
                     "dropped"):
            setattr(kept, name, getattr(kept, name) + getattr(bucket, name))
        for name in ("max_abs_diff", "primary_ms_max", "shadow_ms_max"):
            setattr(kept, name, max(getattr(kept, name), getattr(bucket, name)))
        kept.samples.extend(bucket.samples)
    return merged
