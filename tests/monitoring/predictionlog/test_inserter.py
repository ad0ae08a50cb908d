"""The in-process inserter on the test database: multi-row statements, each record once, times as Django writes them."""

from __future__ import annotations

import os
import sqlite3
import time
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from django.db import connection, connections

from monitoring.models import PredictionRecord
from monitoring.predictionlog.inserter import (
    ROWS_PER_STATEMENT,
    Inserter,
    TimeText,
    insert_sql,
    record_table,
    time_adapter,
)
from monitoring.predictionlog.rows import event_row, raw_row
from tests.monitoring.predictionlog.conftest import served


@pytest.fixture
def inserter(transactional_db):
    table, columns = record_table()
    inserter = Inserter(using="default", db_timeout_s=1.0, table=table, columns=columns)
    yield inserter
    inserter.stop()


def test_a_batch_larger_than_one_statement_is_inserted_once(inserter, make_event):
    raw = [served(make_event, binary=number % 2 == 1) for number in range(ROWS_PER_STATEMENT + 20)]
    final = [make_event(outcome="invalid_input", outputs=None, error="bad row") for _ in range(5)]
    rows = [raw_row(os.urandom(16).hex(), event) for event in raw]
    rows += [event_row(os.urandom(16).hex(), event) for event in final]

    assert inserter.insert(rows) == len(rows)
    assert inserter.insert(rows[-30:]) == 0  # a retry or a replay adds nothing
    assert PredictionRecord.objects.count() == len(rows)
    record = PredictionRecord.objects.get(request_id=raw[3].request_id)
    assert record.inputs == raw[3].inputs and record.outputs == raw[3].outputs
    assert record.received_at.timestamp() == pytest.approx(raw[3].received_at, abs=1e-6)
    refused = PredictionRecord.objects.get(request_id=final[0].request_id)
    assert (refused.outcome, refused.error, refused.outputs) == ("invalid_input", "bad row", None)


def test_times_are_the_text_django_writes(db):
    # One converter for all of them: the cached second must not leak into the next.
    to_text = TimeText()
    for ts in (1_700_000_000.0, 1_700_000_000.25, 1_700_000_000.123456, 1_700_000_000.9999996,
               1_700_000_001.5, 86_400.000001, 1_700_000_000.000001):
        assert to_text(ts) == connection.ops.adapt_datetimefield_value(datetime.fromtimestamp(ts, UTC)), ts


@pytest.fixture
def local_time_not_utc(monkeypatch):
    """The process's local time zone is not UTC (the settings' TIME_ZONE sets it to UTC for the tests)."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def file_inserter(file_database):
    table, columns = record_table()
    inserter = Inserter(using="log-file", db_timeout_s=1.0, table=table, columns=columns)
    yield inserter
    inserter.stop()


def test_a_batch_takes_as_few_statements_as_its_size_allows(inserter, make_event):
    assert inserter.insert([event_row(os.urandom(16).hex(), make_event())]) == 1
    statements: list[str] = []
    connection.connection.set_trace_callback(statements.append)
    try:
        rows = [event_row(os.urandom(16).hex(), make_event()) for _ in range(ROWS_PER_STATEMENT + 20)]
        assert inserter.insert(rows) == len(rows)
    finally:
        connection.connection.set_trace_callback(None)
    assert len([sql for sql in statements if sql.startswith("INSERT")]) == 2
    # The connection was set up for the first batch, not again for each one.
    assert [sql for sql in statements if sql.startswith("PRAGMA")] == []
    assert PredictionRecord.objects.count() == len(rows) + 1


def test_sqlite_keeps_a_nul_character_as_it_was_sent(inserter, make_event):
    assert inserter.insert([event_row(os.urandom(16).hex(), make_event(error="bad\x00row"))]) == 1
    assert PredictionRecord.objects.get().error == "bad\x00row"


def test_a_batch_the_database_refuses_leaves_none_of_its_rows_behind(file_inserter, file_database, make_event):
    rows = [event_row(os.urandom(16).hex(), make_event()) for _ in range(ROWS_PER_STATEMENT + 5)]
    rows[-1] = rows[-1]._replace(received_at="not a time")
    with pytest.raises(TypeError):
        file_inserter.insert(rows)
    assert stored_count(file_database) == 0
    assert file_inserter.insert(rows[:-1]) == len(rows) - 1


@pytest.mark.parametrize(("db_timeout_s", "busy_timeout_ms"), [(2.0, 2000), (0.0001, 1)])
def test_a_locked_database_is_waited_for_the_log_s_timeout_on_every_connection(file_database, make_event,
                                                                              db_timeout_s, busy_timeout_ms):
    table, columns = record_table()
    inserter = Inserter(using="log-file", db_timeout_s=db_timeout_s, table=table, columns=columns)
    try:
        for number in range(2):
            # After close() (a failed insert) the next insert connects again, and sets the timeout again.
            assert inserter.insert([event_row(os.urandom(16).hex(), make_event())]) == 1
            with connections["log-file"].cursor() as cursor:
                cursor.execute("PRAGMA busy_timeout")
                assert cursor.fetchone()[0] == busy_timeout_ms, f"insert {number + 1}"
            inserter.close()
            assert connections["log-file"].connection is None
    finally:
        inserter.stop()
    assert stored_count(file_database) == 2


def stored_count(path) -> int:
    with sqlite3.connect(path) as reader:
        return reader.execute(f"SELECT COUNT(*) FROM {PredictionRecord._meta.db_table}").fetchone()[0]


def test_the_statement_names_its_columns_and_uses_the_driver_s_placeholder():
    postgresql = SimpleNamespace(vendor="postgresql", ops=connection.ops)
    assert insert_sql(connection, "log", ("event_id", "model")) == (
        'INSERT INTO "log" ("event_id", "model") VALUES (?, ?) ON CONFLICT ("event_id") DO NOTHING')
    assert insert_sql(postgresql, "log", ("event_id", "model"), 2) == (
        'INSERT INTO "log" ("event_id", "model") VALUES (%s, %s), (%s, %s) ON CONFLICT ("event_id") DO NOTHING')


def test_each_database_gets_times_in_the_form_it_reads(db, settings, local_time_not_utc):
    ts = 1_700_000_000.25
    utc = datetime.fromtimestamp(ts, UTC)
    postgresql = SimpleNamespace(vendor="postgresql", ops=connection.ops)
    other = SimpleNamespace(vendor="oracle", ops=SimpleNamespace(adapt_datetimefield_value=lambda value: value))
    assert time_adapter(connection)(ts) == "2023-11-14 22:13:20.250000"
    assert time_adapter(postgresql)(ts) == "2023-11-14 22:13:20.250000+00:00"
    assert time_adapter(other)(ts) == utc
    # Without time zones Django stores local time, and so does the log.
    settings.USE_TZ = False
    assert time_adapter(other)(ts) == datetime.fromtimestamp(ts)
    assert time_adapter(connection)(ts) == str(datetime.fromtimestamp(ts))
    assert datetime.fromtimestamp(ts).hour != utc.hour


def test_times_are_utc_whatever_the_local_time_zone(local_time_not_utc):
    assert TimeText()(1_700_000_000.25) == "2023-11-14 22:13:20.250000"


@pytest.mark.parametrize("ts", [
    1.5, -1.5, 0.0,
    pytest.param(-0.5, marks=pytest.mark.xfail(
        strict=True, raises=AssertionError,
        reason="TimeText starts its cache at second -1, so a first time within it gets no date")),
])
def test_a_converter_s_first_time_is_never_taken_from_its_empty_cache(db, ts):
    assert TimeText()(ts) == connection.ops.adapt_datetimefield_value(datetime.fromtimestamp(ts, UTC))


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="TimeText writes UTC where Django's SQLite backend writes the database's TIME_ZONE, "
                          "when DATABASES sets one")
def test_times_are_stored_in_the_database_s_own_time_zone(file_inserter, make_event):
    connections["log-file"].settings_dict["TIME_ZONE"] = "Asia/Kolkata"
    event = make_event(received_at=1_700_000_000.0)
    assert file_inserter.insert([event_row(os.urandom(16).hex(), event)]) == 1
    record = PredictionRecord.objects.using("log-file").get()
    assert record.received_at.timestamp() == event.received_at
