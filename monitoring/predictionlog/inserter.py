"""Inserting prediction records: multi-row ``INSERT`` statements, and the interface every inserter has.

:class:`RowInserter` is what the log's writer thread writes through. Two
classes implement it: :class:`Inserter`, which runs the statements on the
driver's own cursor in the calling thread (``PLATFORM_LOG_WRITER=thread``),
and ``writer_process.WriterProcess``, which hands the batches to a child
process running an :class:`Inserter` of its own (``process``).
"""

from __future__ import annotations

import math
from contextlib import closing
from datetime import UTC, datetime
from typing import Any, Protocol

from django.db import DataError, IntegrityError, connections, transaction

from .rows import COLUMNS, Row, materialize, pg_safe

# Rows per INSERT statement: 15 columns x 500 rows, 7,500 bound parameters,
# within SQLite's limit (32,766) and PostgreSQL's (65,535).
ROWS_PER_STATEMENT = 500

# The database refused a row for what it holds, not because it is unreachable:
# such rows are tried one by one so that one bad record never blocks the rest.
ROW_ERRORS = (DataError, IntegrityError, ValueError, TypeError, OverflowError)


class RowInserter(Protocol):
    """Where the prediction log's writer thread sends its batches."""

    def insert(self, rows: list[Row]) -> int:
        """Insert ``rows`` (raw or final), skipping those already stored; return how many were new.

        Raises one of ``ROW_ERRORS`` when the database refused a row for what
        it holds, and another of Django's database errors (``OperationalError``)
        when the database, or whatever runs the statements, failed.
        """
        ...

    def close(self) -> None:
        """Called after a failed insert: what failed is set up again for the next one, not reused."""
        ...

    def stop(self) -> None:
        """Called when the log stops: release the connection, or the process, for good."""
        ...


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
            rows = [pg_safe(row) for row in rows]
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
                    params.append(row.event_id)
                    params.append(to_db_time(row.received_at))
                    params.extend(row[2:])  # the other columns, in the statement's order
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

    def stop(self) -> None:
        """Drop the connection; the next insert, if any, connects again."""
        self.close()

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
    from ..models import PredictionRecord

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
