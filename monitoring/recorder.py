"""The prediction log writer: every answered request becomes a ``PredictionRecord``, off the serving path.

The sink, :meth:`PredictionLog.record`, runs on the event loop once per
request; it turns the event into its row (``monitoring.rows``: for a served
prediction, the frame and the encoded reply as they are), appends the row to
an in-memory buffer and returns. A writer thread takes the buffer in batches
(``PLATFORM_LOG_BATCH_SIZE`` records, or whatever is waiting every
``PLATFORM_LOG_FLUSH_INTERVAL_MS``) and inserts each batch with multi-row
``INSERT`` statements, through a writer process of its own by default
(``monitoring.inserter``, ``PLATFORM_LOG_WRITER``).

When the database is down, locked or slow, replies keep flowing: the writer
retries with exponential backoff while a spill thread moves what does not fit
in memory to an append-only file of JSON lines under ``PLATFORM_LOG_SPILL_DIR``.
Spill files are replayed into the database once it answers again, including
the files a process that died left behind. Each record is given an id, unique
in the table, when it enters the buffer and before it is written anywhere, so
a retry or a replay never writes it twice. Whatever can be kept neither in
the database nor on disk is counted in ``platform_log_records_lost_total``
and logged.
"""

from __future__ import annotations

import asyncio
import atexit
import fcntl
import itertools
import logging
import os
import random
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, Any

import orjson
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import request_started
from django.db import connections

from . import events, metrics
from .events import PredictionEvent
from .exceptions import SpillFileError
from .inserter import ROW_ERRORS, Inserter, WriterProcess, record_table
from .rows import (  # noqa: F401  (the widths are part of this module's interface)
    API_KEY_LENGTH,
    COLUMNS,
    MODEL_LENGTH,
    OUTCOME_LENGTH,
    REQUEST_ID_LENGTH,
    Row,
    cleaned_row,
    dump_row,
    event_row,
    raw_row,
)

logger = logging.getLogger(__name__)

#: Where the INSERTs run (PLATFORM_LOG_WRITER): in the writer thread, or in a
#: writer process of its own (monitoring.inserter).
WRITERS = ("thread", "process")
BACKOFF_FIRST_S = 0.1
BACKOFF_CAP_S = 5.0
# After a spill file could not be written, leave the disk alone this long;
# the records wait in memory meanwhile.
SPILL_RETRY_S = 5.0
# How often the writer looks for spill files that other processes left behind.
RESCAN_INTERVAL_S = 30.0
# What the event loop may append in one burst before the spill thread gets the
# GIL back: the buffer may overrun its bound by this much before anything is dropped.
BURST_RECORDS = 10_000
# How long a shutdown may spend writing to the database before it spills the rest.
SHUTDOWN_TIMEOUT_S = 5.0
# Repeated warnings and errors (database still down, records lost) are logged
# at most this often.
LOG_EVERY_S = 60.0

# -- spill files ------------------------------------------------------------------------


class ReplayFile:
    """A spill file taken for replay: locked, read in batches, removed once every line is in the database."""

    def __init__(self, path: Path, handle: IO[bytes], lines: int) -> None:
        self.path = path
        self.handle = handle
        #: Lines not yet in the database (a torn last line included).
        self.lines = lines
        #: Rows read and not yet confirmed inserted.
        self.batch: list[Row] | None = None

    def read(self, size: int) -> tuple[list[Row], int]:
        """Up to ``size`` rows, and how many lines were unreadable."""
        rows: list[Row] = []
        bad = 0
        while len(rows) < size:
            line = self.handle.readline()
            if not line:
                break
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                row = None
            if type(row) is list and len(row) == len(COLUMNS) and type(row[0]) is str:
                rows.append(tuple(row))
            else:
                bad += 1
        return rows, bad

    def close(self) -> None:
        self.handle.close()

    def remove(self) -> None:
        # Removed while still locked: a process that opened it meanwhile sees it unlinked.
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        self.handle.close()


class SpillFiles:
    """Append-only JSON-lines files of records the database could not take yet.

    A process appends to one file of its own at a time, named after its pid
    and held under an exclusive ``flock`` while open. A file nobody holds is
    replayable by any process, which takes the lock first: two processes never
    replay the same file, and a live process's open file is never replayed
    under it.
    """

    PATTERN = "predictions-*.jsonl"

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._token = os.urandom(3).hex()
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._handle: IO[bytes] | None = None
        self._path: Path | None = None
        #: Records in the files this process wrote or is replaying, not yet in the database.
        self.pending = 0
        self._written: dict[str, int] = {}

    def append(self, rows: list[Row]) -> None:
        """Append ``rows`` and fsync; raise ``SpillFileError`` if they could not all be kept."""
        data = b"\n".join([dump_row(row) for row in rows]) + b"\n"
        with self._lock:
            handle, path, start = self._handle, self._path, 0
            try:
                if handle is None or path is None:
                    handle, path = self._open()
                start = handle.tell()
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            except OSError as exc:
                if handle is not None:
                    try:  # leave no torn line behind for the replay to trip on
                        os.ftruncate(handle.fileno(), start)
                    except OSError:
                        pass
                self._close_current()
                raise SpillFileError(
                    f"Could not append {len(rows)} prediction records to the spill file "
                    f"{path or self.directory}: {exc}"
                ) from exc
            self._written[path.name] = self._written.get(path.name, 0) + len(rows)
            self.pending += len(rows)

    def _open(self) -> tuple[IO[bytes], Path]:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"predictions-{os.getpid()}-{self._token}-{next(self._numbers):04d}.jsonl"
        handle = open(path, "ab")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise
        self._handle, self._path = handle, path
        return handle, path

    def _close_current(self) -> None:
        handle, self._handle, self._path = self._handle, None, None
        if handle is not None:
            try:
                handle.close()
            except OSError:
                pass

    def close_current(self) -> None:
        """Close the file being appended to, making it replayable; the next append starts a new one."""
        with self._lock:
            self._close_current()

    def replayable(self) -> list[Path]:
        """Spill files in the directory other than the one this process is appending to, oldest first."""
        try:
            paths = list(self.directory.glob(self.PATTERN))
        except OSError:
            return []
        with self._lock:
            current = self._path
        paths = [path for path in paths if path != current]
        return sorted(paths, key=_mtime)

    def take(self, path: Path) -> ReplayFile | None:
        """Lock ``path`` for replay, or None if another process holds it or it is gone."""
        try:
            handle = open(path, "rb")
        except OSError:
            return None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(handle.fileno()).st_nlink == 0:  # replayed and removed meanwhile
                handle.close()
                return None
            with self._lock:
                known = self._written.pop(path.name, None)
            if known is None:  # left by another process: count it now
                known = _count_lines(handle)
                with self._lock:
                    self.pending += known
        except OSError:
            handle.close()
            return None
        return ReplayFile(path, handle, known)

    def replayed(self, count: int) -> None:
        with self._lock:
            self.pending = max(0, self.pending - count)

    def release(self, replay: ReplayFile) -> None:
        """Give a file back unfinished (at shutdown): it stays for the next process to replay."""
        replay.close()
        with self._lock:
            self.pending = max(0, self.pending - replay.lines)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _count_lines(handle: IO[bytes]) -> int:
    count = 0
    for chunk in iter(lambda: handle.read(1 << 20), b""):
        count += chunk.count(b"\n")
    handle.seek(0)
    return count


# -- the log ----------------------------------------------------------------------------


class PredictionLog:
    """A bounded buffer of prediction events, a writer thread and a spill thread.

    ``buffer_records`` bounds what waits in memory: past it the oldest records
    go to a spill file, and so do those past a tenth of it while the database
    is failing. Far past the bound (twice it, and at least ``BURST_RECORDS``
    more), when not even the disk keeps up, new records are dropped and
    counted as lost: memory is not allowed to grow without limit.
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

        # The writer's view of the database.
        self._db_down = False
        self._attempts = 0
        self._retry_at = 0.0
        self._next_down_log = 0.0
        self._db: Inserter | WriterProcess | None = None

        self._replaying: ReplayFile | None = None
        self._next_scan = 0.0
        self._spill_retry_at = 0.0
        self._lost_lock = threading.Lock()
        self._lost_reported = 0
        self._lost_logged_at = 0.0
        self._lost_unlogged = 0
        self._flush_seen = 0
        self._replay_exhausted = False

    @classmethod
    def from_settings(cls) -> PredictionLog:
        return cls(
            buffer_records=settings.PLATFORM_LOG_BUFFER_RECORDS,
            batch_size=settings.PLATFORM_LOG_BATCH_SIZE,
            flush_interval_ms=settings.PLATFORM_LOG_FLUSH_INTERVAL_MS,
            db_timeout_s=settings.PLATFORM_LOG_DB_TIMEOUT_S,
            spill_dir=settings.PLATFORM_LOG_SPILL_DIR,
            writer=settings.PLATFORM_LOG_WRITER,
        )

    # -- the event loop's side ------------------------------------------------------

    def record(self, event: PredictionEvent) -> None:
        """The prediction sink: called on the event loop for every answered request; returns at once.

        The event becomes its row here, on the loop. A served prediction
        becomes a tuple of what it already has: the client's frame and the
        encoded reply, text and bytes that the writer parses again for the
        inputs and outputs (in the writer process, off this interpreter;
        ``monitoring.rows.materialize``). Anything else (an error) gets its
        final row at once, inputs and outputs as JSON text. Either way the
        buffer holds only text, bytes and numbers, where a buffer of events
        would keep every request's parsed inputs and formatted outputs alive
        for up to a flush interval. Those object graphs, outliving the young
        collections and then freed in bulk by the writer thread, stalled the
        event loop for tens of milliseconds at a time (p99 at 32 rows: 25 ms
        with them, 8-10 ms without).
        """
        buffer = self._buffer
        size = len(buffer)
        if size >= self._drop_at:
            self._dropped += 1
            return
        try:
            event_id = f"{self._id_prefix}{next(self._seq):016x}"
            # A served prediction keeps its frame and reply as they are, for the writer to parse.
            if event.reply is not None and event.frame is not None:
                row = raw_row(event_id, event)
            else:
                row = event_row(event_id, event)
        except Exception:
            logger.exception("The prediction event of request %r could not be turned into a record",
                             getattr(event, "request_id", None))
            self._lose(1, "an event could not be turned into a record")
            return
        buffer.append(row)
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
            self._write_loop()
        except Exception:
            logger.exception("The prediction-log writer stopped on an unexpected error; it restarts on the next event")
            with self._start_lock:
                self._writer = None
        finally:
            self._stop_inserter()

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
            self._replay_exhausted = False
            if self._replay_wanted(flushing):
                while len(buffer) + len(ready) < batch_size and not self._stopping:
                    if not flushing and time.monotonic() >= next_due:
                        break
                    if not self._replay_step():
                        break
            self._publish()

            if flushing and self._settled():
                with self._flushed:
                    self._flush_done = requested
                    self._flushed.notify_all()

    def _settled(self) -> bool:
        return (
            not self._buffer and not self._ready and not self._db_down
            and self._replaying is None and self._replay_exhausted
        )

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
        """Insert ``rows``, retrying with backoff until they are in.

        Returns False only when the log is stopping and its deadline passed
        first; the caller then spills the rows.
        """
        if not rows:
            return True
        self._held = len(rows)
        try:
            while True:
                now = time.monotonic()
                deadline = self._stop_deadline if self._stopping else None
                if deadline is not None and now >= deadline:
                    return False
                wait_s = self._retry_at - now
                if wait_s > 0:
                    if deadline is not None:
                        time.sleep(min(wait_s, deadline - now))
                    else:
                        self._stop_requested.wait(wait_s)
                    continue
                try:
                    self._insert(rows)
                except Exception as exc:
                    self._failed(exc)
                    continue
                self._succeeded()
                return True
        finally:
            self._held = 0

    def _failed(self, exc: Exception) -> None:
        self._attempts += 1
        metrics.LOG_WRITE_ERRORS.inc()
        self._close_connection()
        delay_s = min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2 ** min(self._attempts - 1, 16))
        # Jitter, so that the processes of one deployment do not all come back at once.
        self._retry_at = time.monotonic() + delay_s * random.uniform(0.75, 1.0)
        now = time.monotonic()
        if not self._db_down:
            self._db_down = True
            self._next_down_log = now + LOG_EVERY_S
            self._spill_wake.set()
            logger.warning(
                "The prediction log cannot write to the database (%s: %s); retrying with backoff. "
                "Records wait in memory, and past %d of them in spill files under %s.",
                type(exc).__name__, exc, self._high_water, self.spill.directory,
            )
        elif now >= self._next_down_log:
            self._next_down_log = now + LOG_EVERY_S
            logger.warning(
                "The prediction log still cannot write to the database after %d attempts (%s: %s); "
                "%d records in memory, %d in spill files.",
                self._attempts, type(exc).__name__, exc, len(self._buffer) + len(self._ready),
                self.spill.pending,
            )

    def _succeeded(self) -> None:
        if self._db_down:
            logger.warning(
                "The prediction log writes to the database again after %d failed attempts.", self._attempts
            )
            self._db_down = False
            self._next_scan = 0.0
        self._attempts = 0
        self._retry_at = 0.0

    # -- the database ----------------------------------------------------------------

    def _insert(self, rows: list[Row]) -> int:
        """Insert ``rows`` (those already there are skipped); return how many were new."""
        try:
            inserted = self._execute(rows)
        except ROW_ERRORS:
            inserted = self._insert_one_by_one(rows)
        else:
            metrics.LOG_RECORDS_WRITTEN.inc(inserted)
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
                    self._lose(1, f"the database refused record {row[0]}: {exc}")
        metrics.LOG_RECORDS_WRITTEN.inc(inserted)
        return inserted

    def _execute(self, rows: list[Row]) -> int:
        db = self._db
        if db is None:
            db = self._db = self._make_inserter()
        return db.insert(rows)

    def _make_inserter(self) -> Inserter | WriterProcess:
        writer = self.writer
        connection = connections[self.using]
        if writer == "process" and connection.vendor == "sqlite" and connection.is_in_memory_db():
            logger.info("The prediction log writes from a thread: another process cannot open an in-memory database.")
            writer = "thread"
        if writer == "process":
            return WriterProcess(using=self.using, db_timeout_s=self.db_timeout_s)
        table, columns = record_table()
        return Inserter(using=self.using, db_timeout_s=self.db_timeout_s, table=table, columns=columns)

    def _close_connection(self) -> None:
        # A broken or restarted database must be reconnected to, not reused.
        if self._db is not None:
            self._db.close()

    def _stop_inserter(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.stop()

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
            down = self._db_down
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
        metrics.LOG_RECORDS_SPILLED.inc(len(rows))
        self._next_scan = 0.0
        return True

    def _spill_or_lose(self, rows: list[Row]) -> None:
        if rows and not self._spill(rows):
            self._lose(len(rows), "they could be written neither to the database nor to a spill file")

    def _finish(self) -> None:
        """Stopping: write what is in memory while the deadline allows, spill the rest."""
        if self._replaying is not None:
            self.spill.release(self._replaying)
            self._replaying = None
        while self._buffer or self._ready:
            rows = self._take(self.batch_size)
            if time.monotonic() < self._stop_deadline and self._write(rows):
                continue
            self._spill_or_lose(rows)
        self.spill.close_current()
        self._publish()

    # -- replaying spill files -------------------------------------------------------

    def _replay_wanted(self, flushing: bool) -> bool:
        if self._db_down and time.monotonic() < self._retry_at:
            return False
        if self._replaying is not None or self.spill.pending:
            return True
        return flushing or time.monotonic() >= self._next_scan

    def _replay_step(self) -> bool:
        """Insert one batch from a spill file; False when there is nothing (more) to replay now."""
        replay = self._replaying
        if replay is None:
            replay = self._next_replay()
            if replay is None:
                return False
        if time.monotonic() < self._retry_at:
            return False
        if replay.batch is None:
            try:
                rows, bad = replay.read(self.batch_size)
            except OSError as exc:
                logger.error("Could not read the spill file %s: %s; it is left for a later attempt.",
                             replay.path, exc)
                self.spill.release(replay)
                self._replaying = None
                return False
            if bad:
                replay.lines -= bad
                self.spill.replayed(bad)
                self._lose(bad, f"unreadable lines in the spill file {replay.path}")
            if not rows:
                replay.remove()
                self.spill.replayed(replay.lines)
                self._replaying = None
                logger.info("Replayed the spill file %s into the database.", replay.path)
                return True
            replay.batch = rows
        try:
            self._insert(replay.batch)
        except Exception as exc:
            self._failed(exc)
            return False
        self._succeeded()
        replay.lines -= len(replay.batch)
        self.spill.replayed(len(replay.batch))
        replay.batch = None
        return True

    def _next_replay(self) -> ReplayFile | None:
        # Our own open file becomes replayable once the database answers again.
        self.spill.close_current()
        for path in self.spill.replayable():
            replay = self.spill.take(path)
            if replay is not None:
                self._replaying = replay
                return replay
        self._next_scan = time.monotonic() + RESCAN_INTERVAL_S
        self._replay_exhausted = True
        return None

    # -- what cannot be kept ---------------------------------------------------------

    def _lose(self, count: int, reason: str) -> None:
        metrics.LOG_RECORDS_LOST.inc(count)
        with self._lost_lock:
            self._lost_unlogged += count
            now = time.monotonic()
            if now < self._lost_logged_at:
                return
            count, self._lost_unlogged = self._lost_unlogged, 0
            self._lost_logged_at = now + LOG_EVERY_S
        logger.error("%d prediction records are lost: %s.", count, reason)

    def _publish(self) -> None:
        with self._lost_lock:
            dropped = self._dropped - self._lost_reported
            self._lost_reported += dropped
        if dropped > 0:
            self._lose(dropped, f"the buffer held {self._drop_at} records and the disk did not keep up")
        metrics.LOG_BUFFER_RECORDS.set(len(self._buffer) + len(self._ready) + self._held)
        metrics.LOG_SPILL_RECORDS.set(self.spill.pending)


# -- the process's log ------------------------------------------------------------------

_log: PredictionLog | None = None
_log_lock = threading.Lock()


def get_log() -> PredictionLog:
    """The prediction log of this process, configured from settings on first use."""
    global _log
    if _log is None:
        with _log_lock:
            if _log is None:
                _log = PredictionLog.from_settings()
    return _log


def flush(timeout_s: float = 10.0) -> bool:
    return get_log().flush(timeout_s)


def _start_serving(**kwargs: Any) -> None:
    """Called on every HTTP request: a serving process replays spill files without waiting for traffic."""
    log = _log
    if log is not None and log._writer is None:
        log.start()


async def _stop_on_shutdown() -> None:
    """Called when the server shuts down, after the connections were drained."""
    if _log is not None:
        await asyncio.to_thread(_log.stop, SHUTDOWN_TIMEOUT_S)


def _stop_at_exit() -> None:
    # For processes that never run the shutdown hooks (runserver, scripts).
    if _log is not None:
        _log.stop(SHUTDOWN_TIMEOUT_S)


_installed = {"done": False}


def install() -> None:
    """Register the prediction-log sink on monitoring.events; no thread starts before the first event."""
    if _installed["done"] or not settings.PLATFORM_LOG_ENABLED:
        return
    _installed["done"] = True
    from platform_core.lifecycle import on_shutdown

    events.on_prediction(get_log().record)
    request_started.connect(_start_serving, dispatch_uid="monitoring.recorder")
    on_shutdown(_stop_on_shutdown, order=50)
    atexit.register(_stop_at_exit)
