"""The journal: each record on disk before its reply leaves, so that a crash of the server loses no answered request.

The sink appends every record here as well as to the in-memory buffer. The
records of one pass of the event loop are written with one ``write()`` at the
start of the next pass, before the replies of that pass are sent: the
platform's server runs :meth:`Journal.write_pending` first whenever it sends
what its connections wrote (``platform_core.wiring`` connects the two), and
a callback on the event loop does it as well, for any other server. Once
written, the operating system keeps a record even if the process is killed;
a thread ``fsync``\\ s the journal every ``fsync_interval_ms``, which bounds
what a crash of the whole machine can take.

A process writes segment files of its own (``journal-<pid>-<token>-<n>.bin``,
MessagePack rows back to back), each held under an exclusive ``flock`` while
open. A segment is removed once each of its records is in the database or in
a spill file (:meth:`Journal.settle`). The segments of a process that died are
turned into spill files by the next process to start (:meth:`Journal.recover`),
and replayed from there like any spill file: records the dead process had
already written are not written twice (``ON CONFLICT DO NOTHING`` on their ids).
"""

from __future__ import annotations

import asyncio
import bisect
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack

from .. import log_metrics
from .exceptions import SpillFileError
from .rows import STORED_WIDTHS, Row

logger = logging.getLogger(__name__)

PATTERN = "journal-*.bin"
# A segment past this size is closed and a new one started, so that settled
# records leave the disk in pieces rather than all at once at the end.
SEGMENT_BYTES = 64 * 1024 * 1024
# Rows handed to the spill files at a time when a dead process's journal is recovered.
RECOVER_BATCH = 2000


@dataclass
class Segment:
    """One journal file of this process: the sequence number of its first record, and its records not yet settled."""

    path: Path
    fd: int
    first_seq: int
    size: int = 0
    outstanding: int = 0
    #: Written since its last fsync.
    dirty: bool = False
    closed: bool = False


class Journal:
    """This process's journal: appended on the event loop, settled by the writer threads, fsynced by its own."""

    def __init__(self, directory: Path | str, *, fsync_interval_ms: float = 50.0,
                 segment_bytes: int = SEGMENT_BYTES, id_prefix: str = "") -> None:
        if not fsync_interval_ms > 0:
            raise ValueError(f"fsync_interval_ms must be a positive number of milliseconds, not {fsync_interval_ms!r}.")
        self.directory = Path(directory)
        self.fsync_interval_s = fsync_interval_ms / 1000.0
        self.segment_bytes = segment_bytes
        #: The id prefix of this process's records (``PredictionLog``): other ids are not journaled here.
        self.id_prefix = id_prefix
        self._token = os.urandom(3).hex()
        self._numbers = iter(range(1, 1 << 62))
        self._pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack
        # Written by the event loop only.
        self._pending: list[bytes] = []
        self._pending_first_seq = 0
        self._scheduled = False
        # Shared with the writer, spill and fsync threads.
        self._lock = threading.Lock()
        self._segments: list[Segment] = []
        self._firsts: list[int] = []
        #: Sequence numbers below this were written (or failed to be).
        self._written_below = 0
        #: Settled before their own write (the writer thread can be that quick): counted once written.
        self._early: list[int] = []
        #: (first, end) ranges of records whose write failed: never counted, so never settled either.
        self._unjournaled: list[tuple[int, int]] = []
        self._failures = 0
        self._fsyncer: threading.Thread | None = None
        self._stop = threading.Event()

    # -- the event loop's side ------------------------------------------------------

    def append(self, row: Row, seq: int) -> None:
        """Keep ``row`` (sequence number ``seq`` of this log) for the next write; called on the event loop."""
        pending = self._pending
        if not pending:
            self._pending_first_seq = seq
        pending.append(self._pack(row))
        if not self._scheduled:
            self._schedule()

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a thread or a script: nothing comes back later, write now
            self.write_pending()
            return
        self._scheduled = True
        loop.call_soon(self.write_pending)

    def write_pending(self) -> None:
        """Write what was appended since the last write, with one ``write()``; before the replies go out."""
        self._scheduled = False
        pending = self._pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        count, first = len(pending), self._pending_first_seq
        pending.clear()
        with self._lock:
            self._written_below = first + count
            try:
                segment = self._segment_for(first, len(data))
                _write_all(segment.fd, data)
            except OSError as exc:
                unjournaled = self._unjournaled
                if unjournaled and unjournaled[-1][1] == first:  # one range for a run of failures
                    unjournaled[-1] = (unjournaled[-1][0], first + count)
                else:
                    unjournaled.append((first, first + count))
                error: OSError | None = exc
            else:
                error = None
                log_metrics.LOG_JOURNAL_RECORDS.inc(count)
                segment.size += len(data)
                segment.outstanding += count
                segment.dirty = True
            if self._early:
                early, self._early = self._early, []
                self._count_settled(early)
        if error is not None:
            # The records are still in memory on their way to the database;
            # only a crash before they get there would lose them now.
            log_metrics.LOG_JOURNAL_WRITE_ERRORS.inc()
            self._failures += 1
            if self._failures == 1 or self._failures % 1000 == 0:
                logger.error("Could not write %d prediction records to the journal in %s (%d failures): %s",
                             count, self.directory, self._failures, error)
            return
        if self._fsyncer is None:
            self._start_fsyncer()

    def _segment_for(self, first_seq: int, size: int) -> Segment:
        segments = self._segments
        current = segments[-1] if segments and not segments[-1].closed else None
        if current is not None and current.size + size <= self.segment_bytes:
            return current
        if current is not None:
            current.closed = True
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"journal-{os.getpid()}-{self._token}-{next(self._numbers):05d}.bin"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        segment = Segment(path, fd, first_seq)
        segments.append(segment)
        self._firsts.append(first_seq)
        self._forget_settled()
        return segment

    # -- the writer threads' side -----------------------------------------------------

    def settle(self, rows: list[Row]) -> None:
        """``rows`` are in the database or in a spill file: their journal records may go."""
        prefix, width = self.id_prefix, len(self.id_prefix)
        seqs = [int(row.event_id[width:], 16) for row in rows
                if type(row.event_id) is str and row.event_id.startswith(prefix)]
        if not seqs:
            return
        with self._lock:
            self._count_settled(seqs)

    def _count_settled(self, seqs: list[int]) -> None:
        """With the lock held: take settled records off their segments' counts."""
        firsts, written_below, unjournaled = self._firsts, self._written_below, self._unjournaled
        for seq in seqs:
            if seq >= written_below:
                self._early.append(seq)
                continue
            if unjournaled and any(first <= seq < end for first, end in unjournaled):
                continue
            index = bisect.bisect_right(firsts, seq) - 1
            if index >= 0:
                self._segments[index].outstanding -= 1
        self._forget_settled()

    def _forget_settled(self) -> None:
        """Remove the closed segments whose records are all settled (with the lock held)."""
        keep = [s for s in self._segments if not (s.closed and s.outstanding <= 0)]
        if len(keep) == len(self._segments):
            return
        for segment in self._segments:
            if segment.closed and segment.outstanding <= 0:
                _remove(segment)
        self._segments = keep
        self._firsts = [s.first_seq for s in keep]

    def close(self) -> bool:
        """Stop the fsync thread and close the segments; remove them if every record is settled.

        Returns True when nothing was left on disk.
        """
        self._stop.set()
        if self._fsyncer is not None:
            self._fsyncer.join(5)
            self._fsyncer = None
        self._stop.clear()
        with self._lock:
            left = [s for s in self._segments if s.outstanding > 0]
            for segment in self._segments:
                if segment.outstanding > 0:
                    _fsync(segment.fd)
                    os.close(segment.fd)
                else:
                    _remove(segment)
            self._segments, self._firsts = [], []
        if left:
            logger.warning("%d prediction records stay in the journal for the next start to recover",
                           sum(s.outstanding for s in left))
        return not left

    # -- fsync ---------------------------------------------------------------------------

    def _start_fsyncer(self) -> None:
        with self._lock:
            if self._fsyncer is not None:
                return
            self._fsyncer = threading.Thread(target=self._fsync_forever, name="prediction-log-journal", daemon=True)
            self._fsyncer.start()

    def _fsync_forever(self) -> None:
        while not self._stop.wait(self.fsync_interval_s):
            self.sync()

    def sync(self) -> None:
        """fsync every segment written since its last fsync (the lock is held only to pick them)."""
        with self._lock:
            dirty = []
            for segment in self._segments:
                if segment.dirty:
                    segment.dirty = False
                    dirty.append(os.dup(segment.fd))
        for fd in dirty:
            started = time.perf_counter()
            _fsync(fd)
            log_metrics.LOG_JOURNAL_FSYNC.observe(time.perf_counter() - started)
            os.close(fd)

    # -- recovering what a dead process left -------------------------------------------

    def recover(self, spill: Callable[[list[Row]], None]) -> int:
        """Hand the records of every journal no live process holds to ``spill``, then remove those journals.

        Returns how many records were recovered. ``spill`` raises
        ``SpillFileError`` when it cannot keep them; the journal then stays.
        """
        recovered = 0
        try:
            paths = sorted(self.directory.glob(PATTERN))
        except OSError:
            return 0
        with self._lock:
            own = {segment.path for segment in self._segments}
        for path in paths:
            if path in own:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # a live process's segment
                os.close(fd)
                continue
            try:
                count = 0
                for rows in _read_rows(fd):
                    spill(rows)
                    count += len(rows)
                path.unlink(missing_ok=True)
            except SpillFileError as exc:
                logger.error("Could not recover the journal %s: %s", path, exc)
                continue
            finally:
                os.close(fd)
            recovered += count
            log_metrics.LOG_JOURNAL_RECOVERED.inc(count)
            if count:
                logger.warning("Recovered %d prediction records from %s, left by a process that stopped "
                               "without writing them", count, path.name)
        return recovered


def _read_rows(fd: int) -> Iterator[list[Row]]:
    """The rows of one journal file, in batches; a torn last record (the process died writing it) is skipped."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=1 << 30)
    rows: list[Row] = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        unpacker.feed(chunk)
        try:
            for values in unpacker:
                if type(values) is list and len(values) in STORED_WIDTHS:
                    rows.append(Row(*values))
                if len(rows) >= RECOVER_BATCH:
                    yield rows
                    rows = []
        except (msgpack.UnpackException, ValueError) as exc:
            logger.warning("A journal ends in a damaged record, skipped: %s", exc)
            break
    if rows:
        yield rows


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        logger.error("Could not fsync the prediction-log journal: %s", exc)


def _remove(segment: Segment) -> None:
    try:
        segment.path.unlink(missing_ok=True)
    except OSError as exc:  # the directory itself gone or replaced: the records were settled anyway
        logger.warning("Could not remove the journal segment %s: %s", segment.path, exc)
    finally:
        try:
            os.close(segment.fd)
        except OSError:
            pass

