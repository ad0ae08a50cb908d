"""Spill files: records the database could not take yet, kept on disk and replayed into it later.

A process appends to one file of its own at a time (:class:`SpillFiles`),
named after its pid and held under an exclusive ``flock`` while open. A file
nobody holds is replayable by any process, which takes the lock first
(:class:`ReplayFile`): two processes never replay the same file, and a live
process's open file is never replayed under it. The files a process that
died left behind are replayed by the next one that looks (:class:`Replay`).
Each line is one row (``rows.dump_row``).
"""

from __future__ import annotations

import fcntl
import itertools
import os
import threading
import time
from pathlib import Path
from typing import IO

from .exceptions import SpillFileError, SpillReplayError
from .rows import Row, dump_row, load_row

# How often the writer looks for spill files that other processes left behind.
RESCAN_INTERVAL_S = 30.0


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
            row = load_row(line)
            if row is None:
                bad += 1
            else:
                rows.append(row)
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
    """The append-only JSON-lines files of one directory: this process's own, and those it may replay."""

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


class Replay:
    """The writer thread's way through the spill files: one file at a time, a batch at a time, oldest first.

    Used by the writer thread alone. A batch read stays the file's
    (``ReplayFile.batch``) until :meth:`inserted` confirms it, so a failed
    insert is retried with the same rows.
    """

    def __init__(self, files: SpillFiles) -> None:
        self.files = files
        #: The file being replayed, locked by this process.
        self.current: ReplayFile | None = None
        #: When to look again for files that other processes left behind.
        self.next_scan = 0.0
        #: Whether the last look found nothing (more) to replay.
        self.exhausted = False

    @property
    def done(self) -> bool:
        """Whether every spill file found was replayed."""
        return self.current is None and self.exhausted

    def wanted(self, flushing: bool) -> bool:
        """Whether there may be something to replay now."""
        if self.current is not None or self.files.pending:
            return True
        return flushing or time.monotonic() >= self.next_scan

    def scan_soon(self) -> None:
        """Look for spill files at the next chance: one was just written, or the database answers again."""
        self.next_scan = 0.0

    def open_next(self) -> ReplayFile | None:
        """Take the oldest replayable file, or None (and look again later) if there is none."""
        # Our own open file becomes replayable once the database answers again.
        self.files.close_current()
        for path in self.files.replayable():
            replay = self.files.take(path)
            if replay is not None:
                self.current = replay
                return replay
        self.next_scan = time.monotonic() + RESCAN_INTERVAL_S
        self.exhausted = True
        return None

    def read(self, size: int) -> tuple[list[Row], int]:
        """The current file's next rows, up to ``size``, and how many lines were unreadable.

        Raises ``SpillReplayError`` if the file could not be read; it is then
        released, for a later attempt.
        """
        replay = self.current
        if replay is None:
            raise SpillReplayError("No spill file is being replayed.")
        try:
            rows, bad = replay.read(size)
        except OSError as exc:
            self.release()
            raise SpillReplayError(
                f"Could not read the spill file {replay.path}: {exc}; it is left for a later attempt."
            ) from exc
        if bad:
            replay.lines -= bad
            self.files.replayed(bad)
        return rows, bad

    def inserted(self) -> None:
        """The current batch is in the database."""
        replay = self.current
        if replay is not None and replay.batch is not None:
            replay.lines -= len(replay.batch)
            self.files.replayed(len(replay.batch))
            replay.batch = None

    def finish(self) -> None:
        """Every line of the current file is in the database: remove it."""
        replay, self.current = self.current, None
        if replay is not None:
            replay.remove()
            self.files.replayed(replay.lines)

    def release(self) -> None:
        """Give the current file back unfinished: it stays for a later replay."""
        replay, self.current = self.current, None
        if replay is not None:
            self.files.release(replay)
