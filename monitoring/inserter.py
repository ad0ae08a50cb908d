"""Inserting prediction records: in the writer thread, or in a writer process of its own.

:class:`Inserter` turns rows into multi-row ``INSERT`` statements on the
driver's own cursor. The prediction log's writer thread uses one directly
(``PLATFORM_LOG_WRITER=thread``) or hands its batches, rows still raw, to
:class:`WriterProcess` (``process``, the default for a file or server
database): a child process (``python -m monitoring.inserter``) that
materializes the rows and runs the same ``Inserter``, so that parsing,
formatting and binding thousands of parameters a second happen off the
server's interpreter. The server keeps the buffer, the spill files, the
retries and the flush on shutdown; the child only inserts what it is given
and answers how many rows were new, or why it could not.

The two talk over the child's stdin and a duplicate of its stdout in pickles
(both ends are this module, in processes of one deployment): batches are
pickled straight into the pipe, a frame at a time, never built whole in the
server's memory; answers are small, length-prefixed so that the server can
wait for one with a deadline. The child exits when its stdin closes, which
includes the server dying.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import select
import struct
import subprocess
import sys
import time
from contextlib import closing
from datetime import UTC, datetime
from typing import IO, Any

from django.db import DataError, IntegrityError, OperationalError, connections, transaction

from .rows import COLUMNS, Row, _pg_safe, materialize

logger = logging.getLogger(__name__)

# Rows per INSERT statement: 15 columns x 500 rows, 7,500 bound parameters,
# within SQLite's limit (32,766) and PostgreSQL's (65,535).
ROWS_PER_STATEMENT = 500

# The database refused a row for what it holds, not because it is unreachable:
# such rows are tried one by one so that one bad record never blocks the rest.
ROW_ERRORS = (DataError, IntegrityError, ValueError, TypeError, OverflowError)

_HEADER = struct.Struct("!I")


class Inserter:
    """Multi-row ``INSERT ... ON CONFLICT DO NOTHING`` of rows into the prediction log's table."""

    def __init__(self, *, using: str, db_timeout_s: float, table: str, columns: tuple[str, ...]) -> None:
        self.using = using
        self.db_timeout_s = db_timeout_s
        self.table = table
        self.columns = columns
        self._prepared_for: Any = None
        self._statements: dict[int, str] = {}
        self._to_db_time: Any = None
        self._nul_unsafe = False

    def insert(self, rows: list[Row]) -> int:
        """Insert ``rows`` (raw or final); return how many were new. Raises Django's database errors."""
        connection = connections[self.using]
        if connection.connection is None or connection.connection is not self._prepared_for:
            self._prepare(connection)
        to_db_time = self._to_db_time
        rows = [materialize(row) for row in rows]
        if self._nul_unsafe:
            rows = [_pg_safe(row) for row in rows]
        count = 0
        # The driver's own cursor, with the driver's placeholders: Django's
        # cursor wrappers rewrite and time every statement, which for a
        # statement of thousands of parameters costs more than building its rows.
        # Errors are still turned into Django's (IntegrityError, DataError, ...).
        with (
            transaction.atomic(using=self.using),
            connection.wrap_database_errors,
            closing(connection.connection.cursor()) as cursor,
        ):
            # Multi-row statements: executemany() steps SQLite once per row,
            # releasing and retaking the GIL each time; a statement of
            # hundreds of rows does it hundreds of times less.
            for start in range(0, len(rows), ROWS_PER_STATEMENT):
                chunk = rows[start : start + ROWS_PER_STATEMENT]
                params: list[Any] = []
                for row in chunk:
                    params.append(row[0])
                    params.append(to_db_time(row[1]))
                    params.extend(row[2:])
                cursor.execute(self._statement(connection, len(chunk)), params)
                count += max(cursor.rowcount, 0)
        return count

    def close(self) -> None:
        """Drop the connection: a broken or restarted database must be reconnected to, not reused."""
        self._prepared_for = None
        try:
            connections[self.using].close()
        except Exception:
            pass

    stop = close

    def _statement(self, connection: Any, n_rows: int) -> str:
        sql = self._statements.get(n_rows)
        if sql is None:
            sql = self._statements[n_rows] = insert_sql(connection, self.table, self.columns, n_rows)
        return sql

    def _prepare(self, connection: Any) -> None:
        """Connect, and make a locked or slow database an error after ``db_timeout_s`` rather than a hang."""
        connection.ensure_connection()
        timeout_ms = max(1, int(self.db_timeout_s * 1000))
        with connection.cursor() as cursor:
            if connection.vendor == "sqlite":
                cursor.execute(f"PRAGMA busy_timeout = {timeout_ms}")
            elif connection.vendor == "postgresql":
                cursor.execute(f"SET statement_timeout = {timeout_ms}")
                cursor.execute(f"SET lock_timeout = {timeout_ms}")
        if self._to_db_time is None:
            self._to_db_time = time_adapter(connection)
            self._nul_unsafe = connection.vendor == "postgresql"
        self._prepared_for = connection.connection


def record_table() -> tuple[str, tuple[str, ...]]:
    """The prediction log's table and the column of each of ``COLUMNS``."""
    from .models import PredictionRecord

    opts = PredictionRecord._meta
    return opts.db_table, tuple(opts.get_field(name).column for name in COLUMNS)


def insert_sql(connection: Any, table: str, columns: tuple[str, ...], n_rows: int = 1) -> str:
    quote = connection.ops.quote_name
    # The driver's placeholder: the statement goes to the driver's own cursor.
    marker = "?" if connection.vendor == "sqlite" else "%s"
    placeholders = ", ".join([f"({', '.join([marker] * len(columns))})"] * n_rows)
    return (
        f"INSERT INTO {quote(table)} ({', '.join(quote(column) for column in columns)}) VALUES {placeholders} "
        f"ON CONFLICT ({quote(columns[COLUMNS.index('event_id')])}) DO NOTHING"
    )


class TimeText:
    """Unix seconds as the text a database reads for a UTC ``DateTimeField``, the second's part cached.

    The records of a batch mostly share their second, and formatting a
    datetime costs more than the rest of building a row.
    """

    def __init__(self, suffix: str = "") -> None:
        self.suffix = suffix
        self._second = -1
        self._prefix = ""

    def __call__(self, ts: float) -> str:
        # datetime.fromtimestamp's rounding, to the microsecond.
        fraction, whole = math.modf(ts)
        second, micro = int(whole), round(fraction * 1e6)
        if micro >= 1_000_000 or micro < 0:
            second, micro = second + micro // 1_000_000, micro % 1_000_000
        if second != self._second:
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%d %H:%M:%S")
            self._second = second
        # Django writes no fraction for a whole second, as str(datetime) does.
        if micro:
            return f"{self._prefix}.{micro:06d}{self.suffix}"
        return self._prefix + self.suffix


def time_adapter(connection: Any) -> Any:
    """A function from Unix seconds to what the database takes for a ``DateTimeField``."""
    from django.conf import settings

    if connection.vendor == "sqlite" and settings.USE_TZ:
        # What Django's SQLite backend stores: naive UTC, "YYYY-MM-DD HH:MM:SS[.ffffff]".
        return TimeText()
    if connection.vendor == "postgresql" and settings.USE_TZ:
        return TimeText("+00:00")
    adapt = connection.ops.adapt_datetimefield_value
    if settings.USE_TZ:
        return lambda ts: adapt(datetime.fromtimestamp(ts, UTC))
    return lambda ts: adapt(datetime.fromtimestamp(ts))


# -- the writer process -----------------------------------------------------------------


def _send(stream: IO[bytes], message: Any) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(payload)) + payload)
    stream.flush()


def _read_exactly(fd: int, size: int, deadline: float | None) -> bytes:
    chunks: list[bytes] = []
    while size:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError("the writer process did not answer in time")
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise EOFError("the writer process exited")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _receive(fd: int, deadline: float | None = None) -> Any:
    (size,) = _HEADER.unpack(_read_exactly(fd, _HEADER.size, deadline))
    return pickle.loads(_read_exactly(fd, size, deadline))


class _PipeWriter:
    """The writer process's stdin as ``pickle.dump`` writes to it: each write waits at most until ``deadline``.

    The pipe is non-blocking, so a process that has stopped reading (hung,
    stopped) makes a batch larger than the pipe's buffer a ``TimeoutError``
    instead of a writer thread blocked for good. ``os.write`` releases the
    GIL, so the event loop runs while a batch goes out a frame at a time.
    """

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.deadline = math.inf

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        while view:
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:
                remaining = self.deadline - time.monotonic()
                if remaining <= 0 or not select.select([], [self.fd], [], remaining)[1]:
                    raise TimeoutError("the writer process did not take its batch in time") from None
                continue
            view = view[written:]
        return len(data)

    def send(self, message: Any, deadline: float) -> None:
        self.deadline = deadline
        pickle.dump(message, self, protocol=pickle.HIGHEST_PROTOCOL)


class WriterProcess:
    """The server's handle on its writer process: started when first needed, restarted after a failure.

    :meth:`insert` has :class:`Inserter`'s contract: it returns how many rows
    were new, raises ``DataError`` when the database refused a row for what
    it holds and ``OperationalError`` for anything else (the database, or the
    process itself, failing), so the log's retries and spills work unchanged.
    """

    def __init__(self, *, using: str, db_timeout_s: float) -> None:
        self.using = using
        self.db_timeout_s = db_timeout_s
        # A statement may wait db_timeout_s for a lock; a batch is one statement
        # (two at most), and the process may need a few seconds to start.
        self.answer_timeout_s = max(30.0, 4 * db_timeout_s)
        self._process: subprocess.Popen[bytes] | None = None
        self._pipe: _PipeWriter | None = None  # the stdin of the process running
        self._table: tuple[str, tuple[str, ...]] | None = None

    def insert(self, rows: list[Row]) -> int:
        process = self._process
        if process is None or process.poll() is not None:
            process = self._start()
        assert process.stdout is not None and self._pipe is not None
        try:
            # Pickled straight into the pipe, a frame at a time: a batch as one
            # bytes object (megabytes at 32-row requests) held the GIL, and so
            # the event loop, for tens of milliseconds of copying and page faults.
            deadline = time.monotonic() + self.answer_timeout_s
            self._pipe.send(("insert", rows), deadline)
            answer = _receive(process.stdout.fileno(), deadline)
        except (OSError, EOFError, TimeoutError, pickle.PickleError, struct.error) as exc:
            self.stop()
            raise OperationalError(f"The prediction-log writer process failed: {exc}") from exc
        kind = answer[0]
        if kind == "ok":
            return answer[1]
        if kind == "row":
            raise DataError(answer[1])
        raise OperationalError(answer[1])

    def close(self) -> None:
        """After a failure: the process has dropped its connection already (it does on every error)."""

    def stop(self) -> None:
        """End the process: it finishes what it was given, then exits on the end of its input."""
        process, self._process = self._process, None
        self._pipe = None
        if process is None:
            return
        try:
            if process.stdin is not None:
                process.stdin.close()
            process.wait(timeout=self.answer_timeout_s)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()
        finally:
            if process.stdout is not None:
                process.stdout.close()

    def _start(self) -> subprocess.Popen[bytes]:
        from django.conf import settings

        if self._table is None:
            self._table = record_table()
        table, columns = self._table
        process = subprocess.Popen(
            [sys.executable, "-m", "monitoring.inserter"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
            # Out of the server's process group: a Ctrl-C meant for the server
            # must not kill the writer under a graceful shutdown's last flush.
            start_new_session=True,
        )
        self._process = process
        assert process.stdin is not None
        self._pipe = _PipeWriter(process.stdin.fileno())
        try:
            self._pipe.send({
                "database": dict(connections[self.using].settings_dict),
                "use_tz": settings.USE_TZ,
                "time_zone": settings.TIME_ZONE,
                "db_timeout_s": self.db_timeout_s,
                "table": table,
                "columns": columns,
            }, time.monotonic() + self.answer_timeout_s)
        except (OSError, TimeoutError) as exc:
            self.stop()
            raise OperationalError(f"The prediction-log writer process did not start: {exc}") from exc
        return process


def serve(setup: dict[str, Any], requests: IO[bytes], answers: IO[bytes]) -> None:
    """The writer process's loop: insert each batch it is sent, answer, until its input ends."""
    inserter = Inserter(using="default", db_timeout_s=setup["db_timeout_s"], table=setup["table"],
                        columns=tuple(setup["columns"]))
    while True:
        try:
            _op, rows = pickle.load(requests)
        except (EOFError, pickle.UnpicklingError):  # closed, or cut off mid-batch
            break
        try:
            answer: tuple[Any, ...] = ("ok", inserter.insert(rows))
        except ROW_ERRORS as exc:
            answer = ("row", f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            inserter.close()
            answer = ("db", f"{type(exc).__name__}: {exc}")
        _send(answers, answer)
    inserter.close()


def main() -> None:
    # Answers go to a copy of stdout; stdout itself goes to stderr, so that
    # nothing Django or a driver prints can end up in the middle of a message.
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = os.fdopen(0, "rb")
    try:
        setup = pickle.load(requests)
    except EOFError:
        return

    import django
    from django.conf import settings

    settings.configure(
        DATABASES={"default": setup["database"]}, USE_TZ=setup["use_tz"], TIME_ZONE=setup["time_zone"],
        INSTALLED_APPS=[],
    )
    django.setup()
    serve(setup, requests, answers)


if __name__ == "__main__":
    main()
