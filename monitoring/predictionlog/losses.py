"""Records that could be kept neither in the database nor on disk: counted, and logged without flooding the log."""

from __future__ import annotations

import logging
import threading
import time

from .. import log_metrics
from .database import LOG_EVERY_S

logger = logging.getLogger("monitoring.predictionlog.log")


class Losses:
    """Counts lost records in ``platform_log_records_lost_total`` and logs them at most every ``LOG_EVERY_S``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reported = 0
        self._logged_at = 0.0
        self._unlogged = 0

    def lose(self, count: int, reason: str) -> None:
        log_metrics.LOG_RECORDS_LOST.inc(count)
        with self._lock:
            self._unlogged += count
            now = time.monotonic()
            if now < self._logged_at:
                return
            count, self._unlogged = self._unlogged, 0
            self._logged_at = now + LOG_EVERY_S
        logger.error("%d prediction records are lost: %s.", count, reason)

    def report_dropped(self, total: int, reason: str) -> None:
        """Count what the event loop dropped since the last report; ``total`` is its running count (no lock there)."""
        with self._lock:
            dropped = total - self._reported
            self._reported += dropped
        if dropped > 0:
            self.lose(dropped, reason)
