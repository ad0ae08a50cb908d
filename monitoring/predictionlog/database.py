"""The writer thread's way into the prediction log's table: attempts, backoff, and spill files replayed.

Every batch goes through a ``RowInserter`` (this thread's ``Inserter`` or the
``WriterProcess``). A batch the database refuses for what one of its rows
holds is inserted a row at a time, each refused row cleaned and tried once
more, so that one bad record never holds back the rest. Any other failure
(the database down, locked or slow; the writer process gone) is a failed
attempt: the next one waits, twice as long each time up to ``BACKOFF_CAP_S``,
with jitter. Spill files are replayed through the same attempts, a batch at
a time, while the database answers.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from django.db import connections

from .. import log_metrics
from .exceptions import SpillReplayError
from .inserter import ROW_ERRORS, Inserter, RowInserter, record_table
from .rows import Row, cleaned_row
from .spill import Replay
from .writer_process import WriterProcess

logger = logging.getLogger(__name__)

#: Where the INSERTs run (PLATFORM_LOG_WRITER): in the writer thread, or in a
#: writer process of its own (writer_process).
WRITERS = ("thread", "process")
BACKOFF_FIRST_S = 0.1
BACKOFF_CAP_S = 5.0
# Repeated warnings and errors (database still down, records lost) are logged
# at most this often.
LOG_EVERY_S = 60.0


class LogDatabase:
    """The prediction log's table as the writer thread sees it: up or down, and when to try again.

    ``down`` holds from a failed attempt until one succeeds; no attempt runs
    before ``retry_at``. The log tells it what waits elsewhere, for the
    warnings (``backlog``: records in memory; ``spill_after``: how many wait
    in memory before the rest go to disk), whom to wake when the database
    goes down (``went_down``), and where lost records are counted (``lose``).
    """

    def __init__(
        self,
        *,
        using: str,
        writer: str,
        db_timeout_s: float,
        replay: Replay,
        lose: Callable[[int, str], None],
        went_down: Callable[[], None],
        backlog: Callable[[], int],
        spill_after: int,
    ) -> None:
        self.using = using
        self.writer = writer
        self.db_timeout_s = db_timeout_s
        self.replay = replay
        self._lose = lose
        self._went_down = went_down
        self._backlog = backlog
        self._spill_after = spill_after
        self.down = False
        self.attempts = 0
        self.retry_at = 0.0
        self._next_down_log = 0.0
        self._inserter: RowInserter | None = None

    # -- live batches ----------------------------------------------------------------

    def write(self, rows: list[Row], deadline: Callable[[], float | None], interrupted: threading.Event) -> bool:
        """Insert ``rows``, retrying with backoff until they are in.

        Returns False only when ``deadline()`` (the log's stop deadline, once
        it is stopping) passed first; the caller then spills the rows. A wait
        for the next attempt ends early when ``interrupted`` is set.
        """
        if not rows:
            return True
        while True:
            now = time.monotonic()
            stop_at = deadline()
            if stop_at is not None and now >= stop_at:
                return False
            wait_s = self.retry_at - now
            if wait_s > 0:
                if stop_at is not None:
                    time.sleep(min(wait_s, stop_at - now))
                else:
                    interrupted.wait(wait_s)
                continue
            if self._attempt(rows):
                return True

    def _attempt(self, rows: list[Row]) -> bool:
        try:
            self._insert(rows)
        except Exception as exc:
            self._failed(exc)
            return False
        self._succeeded()
        return True

    def _failed(self, exc: Exception) -> None:
        self.attempts += 1
        log_metrics.LOG_WRITE_ERRORS.inc()
        # A broken or restarted database must be reconnected to, not reused.
        if self._inserter is not None:
            self._inserter.close()
        delay_s = min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2 ** min(self.attempts - 1, 16))
        # Jitter, so that the processes of one deployment do not all come back at once.
        self.retry_at = time.monotonic() + delay_s * random.uniform(0.75, 1.0)
        now = time.monotonic()
        if not self.down:
            self.down = True
            self._next_down_log = now + LOG_EVERY_S
            self._went_down()
            logger.warning(
                "The prediction log cannot write to the database (%s: %s); retrying with backoff. "
                "Records wait in memory, and past %d of them in spill files under %s.",
                type(exc).__name__, exc, self._spill_after, self.replay.files.directory,
            )
        elif now >= self._next_down_log:
            self._next_down_log = now + LOG_EVERY_S
            logger.warning(
                "The prediction log still cannot write to the database after %d attempts (%s: %s); "
                "%d records in memory, %d in spill files.",
                self.attempts, type(exc).__name__, exc, self._backlog(), self.replay.files.pending,
            )

    def _succeeded(self) -> None:
        if self.down:
            logger.warning(
                "The prediction log writes to the database again after %d failed attempts.", self.attempts
            )
            self.down = False
            self.replay.scan_soon()
        self.attempts = 0
        self.retry_at = 0.0

    # -- inserting -------------------------------------------------------------------

    def _insert(self, rows: list[Row]) -> int:
        """Insert ``rows`` (those already there are skipped); return how many were new."""
        try:
            inserted = self._execute(rows)
        except ROW_ERRORS:
            inserted = self._insert_one_by_one(rows)
        else:
            log_metrics.LOG_RECORDS_WRITTEN.inc(inserted)
        return inserted

    def _insert_one_by_one(self, rows: list[Row]) -> int:
        """Insert rows one at a time, cleaning those refused; lose only what the database refuses even then."""
        inserted = 0
        for row in rows:
            try:
                inserted += self._execute([row])
            except ROW_ERRORS:
                try:
                    inserted += self._execute([cleaned_row(row)])
                except ROW_ERRORS as exc:
                    self._lose(1, f"the database refused record {row.event_id}: {exc}")
        log_metrics.LOG_RECORDS_WRITTEN.inc(inserted)
        return inserted

    def _execute(self, rows: list[Row]) -> int:
        inserter = self._inserter
        if inserter is None:
            inserter = self._inserter = self._make_inserter()
        return inserter.insert(rows)

    def _make_inserter(self) -> RowInserter:
        writer = self.writer
        connection = connections[self.using]
        if writer == "process" and connection.vendor == "sqlite" and connection.is_in_memory_db():
            logger.info("The prediction log writes from a thread: another process cannot open an in-memory database.")
            writer = "thread"
        if writer == "process":
            return WriterProcess(using=self.using, db_timeout_s=self.db_timeout_s)
        table, columns = record_table()
        return Inserter(using=self.using, db_timeout_s=self.db_timeout_s, table=table, columns=columns)

    def stop(self) -> None:
        """Release the inserter (its connection, or its process); the next attempt makes a new one."""
        inserter, self._inserter = self._inserter, None
        if inserter is not None:
            inserter.stop()

    # -- spill files -----------------------------------------------------------------

    def replay_wanted(self, flushing: bool) -> bool:
        """Whether to look at the spill files now: not while waiting to retry a failed attempt."""
        if self.down and time.monotonic() < self.retry_at:
            return False
        return self.replay.wanted(flushing)

    def replay_step(self, batch_size: int) -> bool:
        """Insert one batch from a spill file; False when there is nothing (more) to replay now."""
        replay = self.replay
        current = replay.current
        if current is None:
            current = replay.open_next()
            if current is None:
                return False
        if time.monotonic() < self.retry_at:
            return False
        if current.batch is None:
            try:
                rows, bad = replay.read(batch_size)
            except SpillReplayError as exc:
                logger.error("%s", exc)
                return False
            if bad:
                self._lose(bad, f"unreadable lines in the spill file {current.path}")
            if not rows:
                replay.finish()
                logger.info("Replayed the spill file %s into the database.", current.path)
                return True
            current.batch = rows
        if not self._attempt(current.batch):
            return False
        replay.inserted()
        return True
