"""The prediction log: a bounded buffer of records, a writer thread that inserts them, a spill thread.

The sink, :meth:`PredictionLog.record`, runs on the event loop once per
request; it turns the event into its row (``rows``), appends it to the
buffer and returns. The writer thread takes the buffer in batches
(``batch_size`` records, or whatever is waiting every ``flush_interval_ms``)
and inserts each batch through a ``RowInserter``: in this thread, or through
the writer process (``writer``). While the database fails it retries with
exponential backoff, and the spill thread moves what does not fit in memory
to spill files (``spill``), which the writer replays once the database
answers again. What fits neither is counted as lost and logged.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from .. import log_metrics
from ..events import PredictionEvent
from .database import WRITERS, LogDatabase
from .exceptions import SpillFileError
from .journal import Journal
from .losses import Losses
from .rows import Row, event_row, raw_row
from .spill import Replay, SpillFiles

logger = logging.getLogger(__name__)

# After a spill file could not be written, leave the disk alone this long;
# the records wait in memory meanwhile.
SPILL_RETRY_S = 5.0
# What the event loop may append in one burst before the spill thread gets the
# GIL back: the buffer may overrun its bound by this much before anything is dropped.
BURST_RECORDS = 10_000
# How long a shutdown may spend writing to the database before it spills the rest.
SHUTDOWN_TIMEOUT_S = 5.0


class PredictionLog:
    """A bounded buffer of prediction events, a writer thread and a spill thread.

    ``buffer_records`` bounds what waits in memory: past it the oldest records
    go to a spill file, and so do those past a tenth of it while the database
    is failing. Far past the bound (twice it, and at least ``BURST_RECORDS``
    more), when not even the disk keeps up, new records are dropped and
    counted as lost: memory is not allowed to grow without limit.

    Each record is given an id, unique in the table, when it enters the
    buffer and before it is written anywhere, so a retry or a replay never
    writes it twice.
    """

    def __init__(
        self,
        *,
        buffer_records: int = 100_000,
        batch_size: int = 500,
        flush_interval_ms: float = 250,
        db_timeout_s: float = 5.0,
        spill_dir: Path | str,
        using: str = "default",
        writer: str = "thread",
        journal_dir: Path | str | None = None,
        journal_fsync_ms: float = 50.0,
    ) -> None:
        if buffer_records < 10:
            raise ImproperlyConfigured(
                f"PLATFORM_LOG_BUFFER_RECORDS must be at least 10, not {buffer_records}."
            )
        if batch_size < 1:
            raise ImproperlyConfigured(f"PLATFORM_LOG_BATCH_SIZE must be at least 1, not {batch_size}.")
        if not flush_interval_ms > 0:
            raise ImproperlyConfigured(
                "PLATFORM_LOG_FLUSH_INTERVAL_MS must be a positive number of milliseconds, "
                f"not {flush_interval_ms}."
            )
        if not db_timeout_s > 0:
            raise ImproperlyConfigured(
                f"PLATFORM_LOG_DB_TIMEOUT_S must be a positive number of seconds, not {db_timeout_s}."
            )
        if writer not in WRITERS:
            raise ImproperlyConfigured(f"PLATFORM_LOG_WRITER must be one of {', '.join(WRITERS)}, not {writer!r}.")
        self.writer = writer
        self.buffer_records = buffer_records
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_ms / 1000.0
        self.db_timeout_s = db_timeout_s
        self.using = using
        self.spill = SpillFiles(Path(spill_dir))

        # Written by the event loop, read by the threads (deque appends and
        # pops are atomic).
        self._buffer: deque[Row] = deque()
        # Record ids: a random per-log prefix and a counter, 128 bits in all,
        # given once by the sink as the event's row enters the buffer.
        self._seq = itertools.count()
        self._id_prefix = os.urandom(8).hex()
        self._dropped = 0
        self._drop_at = max(2 * buffer_records, buffer_records + BURST_RECORDS)
        self._wake_at = min(batch_size, buffer_records) - 1
        # Spill down to these when the buffer is full, or the database down.
        self._high_water = max(1, buffer_records // 10)
        self._low_water = buffer_records - max(1, buffer_records // 10)
        # Rows built but not written: a spill that failed gives them back here.
        self._ready: deque[Row] = deque()
        self._held = 0

        self._wake = threading.Event()
        self._spill_wake = threading.Event()
        self._stop_requested = threading.Event()
        self._start_lock = threading.Lock()
        self._writer: threading.Thread | None = None
        self._spiller: threading.Thread | None = None
        self._stopping = False
        self._stop_deadline = 0.0

        self._flushed = threading.Condition()
        self._flush_requested = 0
        self._flush_done = 0
        self._flush_seen = 0

        self._replay = Replay(self.spill)
        self._losses = Losses()
        # The writer thread's view of the database.
        self._db = LogDatabase(
            using=using, writer=writer, db_timeout_s=db_timeout_s, replay=self._replay, lose=self._losses.lose,
            went_down=self._spill_wake.set, backlog=self._in_memory, spill_after=self._high_water,
        )
        self._spill_retry_at = 0.0
        #: Each record on disk before its reply leaves (None: off).
        self.journal = (
            Journal(journal_dir, fsync_interval_ms=journal_fsync_ms, id_prefix=self._id_prefix)
            if journal_dir is not None else None
        )

    @classmethod
    def from_settings(cls) -> PredictionLog:
        return cls(
            buffer_records=settings.PLATFORM_LOG_BUFFER_RECORDS,
            batch_size=settings.PLATFORM_LOG_BATCH_SIZE,
            flush_interval_ms=settings.PLATFORM_LOG_FLUSH_INTERVAL_MS,
            db_timeout_s=settings.PLATFORM_LOG_DB_TIMEOUT_S,
            spill_dir=settings.PLATFORM_LOG_SPILL_DIR,
            writer=settings.PLATFORM_LOG_WRITER,
            journal_dir=settings.PLATFORM_LOG_JOURNAL_DIR if settings.PLATFORM_LOG_JOURNAL else None,
            journal_fsync_ms=settings.PLATFORM_LOG_JOURNAL_FSYNC_MS,
        )

    # -- the event loop's side ------------------------------------------------------

    def record(self, event: PredictionEvent) -> None:
        """The prediction sink: called on the event loop for every answered request; returns at once.

        The event becomes its row here, on the loop. A served prediction
        becomes a row of what it already has: the client's frame and the
        encoded reply, text and bytes that the writer parses again for the
        inputs and outputs (in the writer process, off this interpreter;
        ``rows.materialize``). Anything else (an error) gets its final row at
        once, inputs and outputs as JSON text. Either way the buffer holds
        only text, bytes and numbers: a buffer of events would keep every
        request's parsed inputs and formatted outputs alive for up to a flush
        interval, object graphs that outlive the young collections and are
        then freed in bulk by the writer thread, stalling the event loop.
        """
        buffer = self._buffer
        size = len(buffer)
        if size >= self._drop_at:
            self._dropped += 1
            return
        try:
            seq = next(self._seq)
            event_id = f"{self._id_prefix}{seq:016x}"
            # A served prediction keeps its frame and reply as they are, for the writer to parse.
            if event.reply is not None and event.frame is not None:
                row = raw_row(event_id, event)
            else:
                row = event_row(event_id, event)
        except Exception:
            logger.exception("The prediction event of request %r could not be turned into a record",
                             getattr(event, "request_id", None))
            self._losses.lose(1, "an event could not be turned into a record")
            return
        buffer.append(row)
        if self.journal is not None:
            self.journal.append(row, seq)
        if size >= self._wake_at:
            if not self._wake.is_set():
                self._wake.set()
            if size >= self.buffer_records and not self._spill_wake.is_set():
                self._spill_wake.set()
        if self._writer is None:
            self.start()

    # -- control ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer and spill threads if they are not running; called on the first event."""
        if self._writer is not None:
            return
        with self._start_lock:
            if self._writer is not None:
                return
            self._stopping = False
            self._stop_requested.clear()
            self._writer = threading.Thread(target=self._run_writer, name="prediction-log-writer", daemon=True)
            self._spiller = threading.Thread(target=self._run_spiller, name="prediction-log-spill", daemon=True)
            self._writer.start()
            self._spiller.start()

    @property
    def running(self) -> bool:
        return self._writer is not None and self._writer.is_alive()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Write every record received so far to the database, spill files included.

        Returns True once they are all in the database, False if that did not
        happen within ``timeout_s`` (the database is still down).
        """
        if self._writer is None:
            if not self._buffer and not self._ready and not self.spill.replayable():
                return True
            self.start()
        with self._flushed:
            self._flush_requested += 1
            target = self._flush_requested
        self._wake.set()
        with self._flushed:
            return self._flushed.wait_for(lambda: self._flush_done >= target, timeout_s)

    def stop(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> bool:
        """Write what is in memory to the database, or to a spill file past the time allowed; stop the threads.

        Returns True when the threads stopped within ``timeout_s``. Events
        recorded afterwards start them again.
        """
        with self._start_lock:
            writer, spiller = self._writer, self._spiller
            if writer is None:
                return True
            # Leave a fifth of the time to spill what the database did not take.
            self._stop_deadline = time.monotonic() + timeout_s * 0.8
            self._stopping = True
            self._stop_requested.set()
            self._wake.set()
            self._spill_wake.set()
        writer.join(timeout_s)
        if spiller is not None:
            spiller.join(max(0.1, timeout_s * 0.2))
        if writer.is_alive():
            logger.error("The prediction-log writer did not stop within %.1f s; records still in memory are lost.",
                         timeout_s)
            return False
        with self._start_lock:
            if self._writer is writer:
                self._writer = self._spiller = None
        return True

    # -- the writer thread -----------------------------------------------------------

    def _run_writer(self) -> None:
        try:
            if self.journal is not None and self.journal.recover(self.spill.append):
                self._replay.scan_soon()
            self._write_loop()
        except Exception:
            logger.exception("The prediction-log writer stopped on an unexpected error; it restarts on the next event")
            with self._start_lock:
                self._writer = None
        finally:
            self._db.stop()

    def _write_loop(self) -> None:
        buffer, ready = self._buffer, self._ready
        batch_size = self.batch_size
        next_due = time.monotonic() + self.flush_interval_s
        while True:
            now = time.monotonic()
            if (
                not self._stopping
                and self._flush_requested == self._flush_seen
                and len(buffer) + len(ready) < batch_size
                and now < next_due
            ):
                self._wake.wait(next_due - now)
            self._wake.clear()
            if self._stopping:
                self._finish()
                return
            requested = self._flush_seen = self._flush_requested
            flushing = requested > self._flush_done
            due = flushing or time.monotonic() >= next_due

            # Live records first, a batch at a time.
            while len(buffer) + len(ready) >= batch_size or (due and (buffer or ready)):
                rows = self._take(batch_size)
                if not self._write(rows):
                    self._spill_or_lose(rows)
                    break
            if due:
                next_due = time.monotonic() + self.flush_interval_s

            # Then spill files, while no live batch waits.
            self._replay.exhausted = False
            if self._db.replay_wanted(flushing):
                while len(buffer) + len(ready) < batch_size and not self._stopping:
                    if not flushing and time.monotonic() >= next_due:
                        break
                    if not self._db.replay_step(batch_size):
                        break
            self._publish()

            if flushing and self._settled():
                with self._flushed:
                    self._flush_done = requested
                    self._flushed.notify_all()

    def _settled(self) -> bool:
        return not self._buffer and not self._ready and not self._db.down and self._replay.done

    def _take(self, limit: int) -> list[Row]:
        """Up to ``limit`` rows: first those given back by a failed spill, then new events."""
        rows: list[Row] = []
        ready = self._ready
        while ready and len(rows) < limit:
            try:
                rows.append(ready.popleft())
            except IndexError:
                break
        if len(rows) < limit:
            self._rows_from_buffer(rows, limit)
        return rows

    def _rows_from_buffer(self, rows: list[Row], limit: int) -> None:
        buffer = self._buffer
        while len(rows) < limit:
            try:
                rows.append(buffer.popleft())
            except IndexError:
                return

    def _write(self, rows: list[Row]) -> bool:
        """Insert ``rows``, retrying with backoff; False if the log is stopping and its deadline passed first."""
        self._held = len(rows)
        try:
            written = self._db.write(rows, self._deadline, self._stop_requested)
        finally:
            self._held = 0
        if written and self.journal is not None:
            self.journal.settle(rows)
        return written

    def _deadline(self) -> float | None:
        return self._stop_deadline if self._stopping else None

    # -- spilling --------------------------------------------------------------------

    def _run_spiller(self) -> None:
        try:
            while not self._stopping:
                self._spill_wake.wait(min(self.flush_interval_s, 1.0))
                self._spill_wake.clear()
                if self._stopping:
                    return
                self._spill_excess()
                self._publish()
        except Exception:
            logger.exception("The prediction-log spill thread stopped on an unexpected error")

    def _spill_excess(self) -> None:
        """Move the oldest records to disk while the buffer is past its bound (a tenth of it with the database down)."""
        if time.monotonic() < self._spill_retry_at:
            return
        buffer = self._buffer
        while not self._stopping:
            down = self._db.down
            if len(buffer) <= (self._high_water if down else self.buffer_records):
                return
            target = self._high_water if down else self._low_water
            rows: list[Row] = []
            self._rows_from_buffer(rows, min(len(buffer) - target, 4 * self.batch_size))
            if not rows:
                return
            if not self._spill(rows):
                # The disk refused: give the rows to the writer and leave the disk alone a while.
                self._ready.extend(rows)
                self._spill_retry_at = time.monotonic() + SPILL_RETRY_S
                return

    def _spill(self, rows: list[Row]) -> bool:
        try:
            self.spill.append(rows)
        except SpillFileError as exc:
            logger.error("%s", exc)
            return False
        if self.journal is not None:
            self.journal.settle(rows)
        log_metrics.LOG_RECORDS_SPILLED.inc(len(rows))
        self._replay.scan_soon()
        return True

    def _spill_or_lose(self, rows: list[Row]) -> None:
        if rows and not self._spill(rows):
            self._losses.lose(len(rows), "they could be written neither to the database nor to a spill file")

    def _finish(self) -> None:
        """Stopping: write what is in memory while the deadline allows, spill the rest."""
        self._replay.release()
        while self._buffer or self._ready:
            rows = self._take(self.batch_size)
            if time.monotonic() < self._stop_deadline and self._write(rows):
                continue
            self._spill_or_lose(rows)
        self.spill.close_current()
        if self.journal is not None:
            self.journal.close()
        self._publish()

    # -- what cannot be kept, and the gauges -----------------------------------------

    def _publish(self) -> None:
        self._losses.report_dropped(self._dropped,
                                    f"the buffer held {self._drop_at} records and the disk did not keep up")
        log_metrics.LOG_BUFFER_RECORDS.set(self._in_memory() + self._held)
        log_metrics.LOG_SPILL_RECORDS.set(self.spill.pending)

    def _in_memory(self) -> int:
        return len(self._buffer) + len(self._ready)
