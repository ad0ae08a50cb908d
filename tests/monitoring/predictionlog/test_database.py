"""The writer's attempts on the test database: a refused record, a locked database, retries with backoff."""

from __future__ import annotations

import logging
import threading
import time
import uuid

import pytest
from django.db import DataError, OperationalError

from monitoring.models import PredictionRecord
from monitoring.predictionlog import database
from monitoring.predictionlog.database import LogDatabase
from monitoring.predictionlog.inserter import record_table
from monitoring.predictionlog.rows import Row, cleaned_row, dump_row, event_row
from monitoring.predictionlog.spill import Replay, SpillFiles
from tests.monitoring.predictionlog.conftest import LOST, WRITE_ERRORS, WRITTEN, assert_exactly_once


def test_a_record_the_database_refuses_does_not_hold_back_its_batch(make_log, make_event, metric):
    log = make_log(batch_size=10)
    lost_before = metric(LOST)
    good = [make_event() for _ in range(9)]
    # A lone surrogate, as a lenient JSON parser lets through: no driver can encode it.
    bad = make_event(request_id="bad\ud800id", model="x\ud800", outcome="invalid_request")
    for event in [*good[:4], bad, *good[4:]]:
        log.record(event)
    assert log.flush(timeout_s=10)
    assert PredictionRecord.objects.count() == 10
    cleaned = PredictionRecord.objects.get(outcome="invalid_request")
    assert cleaned.request_id == "bad?id" and cleaned.model == "x?"
    assert metric(LOST) == lost_before


def test_a_locked_database_is_retried_and_every_record_written_once(make_log, make_event, lock_database, metric,
                                                                   eventually):
    log = make_log(batch_size=25)
    errors_before = metric(WRITE_ERRORS)
    sent = []
    with lock_database():
        for _ in range(200):
            event = make_event()
            sent.append(event.request_id)
            log.record(event)
        eventually(lambda: metric(WRITE_ERRORS) - errors_before >= 2, timeout_s=10, what="failed attempts")
        assert not log.flush(timeout_s=0.3), "flush cannot succeed while the database is locked"
    assert log.flush(timeout_s=20)
    assert_exactly_once(sent)



def test_an_in_memory_database_is_written_from_the_thread(make_log, make_event, caplog):
    log = make_log(writer="process")
    with caplog.at_level(logging.INFO, logger="monitoring.predictionlog"):
        for _ in range(10):
            log.record(make_event())
        assert log.flush(timeout_s=10)
    assert PredictionRecord.objects.count() == 10
    assert "another process cannot open an in-memory database" in caplog.text


def test_a_database_that_fails_at_once_is_retried_with_backoff_not_in_a_tight_loop(make_log, make_event,
                                                                                  monkeypatch):
    # An insert that fails without waiting (connection refused): only the
    # backoff keeps the writer thread from spinning and starving the others.
    attempts: list[float] = []

    class RefusedInserter:
        def __init__(self, **options) -> None:
            pass

        def insert(self, rows) -> int:
            attempts.append(time.monotonic())
            raise OperationalError("connection refused")

        def close(self) -> None:
            pass

        def stop(self) -> None:
            pass

    monkeypatch.setattr(database, "Inserter", RefusedInserter)
    log = make_log(batch_size=10, writer="thread")
    for _ in range(10):
        log.record(make_event())
    deadline = time.monotonic() + 5
    while not attempts and time.monotonic() < deadline:
        time.sleep(0.01)
    assert attempts, "the writer tried to insert"
    time.sleep(1.0)
    during_one_second = sum(1 for at in attempts if at <= attempts[0] + 1.0)
    assert 2 <= during_one_second <= 10, f"{during_one_second} attempts in the first second of the failure"
    assert log.stop(timeout_s=0.5)


# -- the writer's attempts, on an inserter the test scripts ---------------------------------


class ScriptedInserter:
    """An inserter that fails while ``failure`` is set and refuses batches holding a row it cannot take."""

    def __init__(self) -> None:
        self.batches: list[list[Row]] = []
        self.at: list[float] = []
        self.failure: Exception | None = None
        #: Event ids refused even once cleaned.
        self.hopeless: set[str] = set()
        self.closed = self.stopped = 0
        #: The options of each ``Inserter(...)`` the log made (this same object each time).
        self.made: list[dict] = []

    def insert(self, rows: list[Row]) -> int:
        self.batches.append(list(rows))
        self.at.append(time.monotonic())
        if self.failure is not None:
            raise self.failure
        for row in rows:
            if "\x00" in row.request_id or row.event_id in self.hopeless:
                raise DataError(f"value refused in record {row.event_id}")
        return len(rows)

    def close(self) -> None:
        self.closed += 1

    def stop(self) -> None:
        self.stopped += 1


class Recorded:
    """What the log heard from its database: records lost, times it went down."""

    def __init__(self) -> None:
        self.lost: list[tuple[int, str]] = []
        self.went_down = 0

    def lose(self, count: int, why: str) -> None:
        self.lost.append((count, why))

    def down(self) -> None:
        self.went_down += 1


@pytest.fixture
def scripted(monkeypatch):
    inserter = ScriptedInserter()

    def make(**options):
        inserter.made.append(options)
        return inserter

    monkeypatch.setattr(database, "Inserter", make)
    return inserter


@pytest.fixture
def recorded() -> Recorded:
    return Recorded()


@pytest.fixture
def log_database(scripted, recorded, tmp_path):
    replay = Replay(SpillFiles(tmp_path / "spill"))
    return LogDatabase(using="default", writer="thread", db_timeout_s=0.2, replay=replay, lose=recorded.lose,
                       went_down=recorded.down, backlog=lambda: 7, spill_after=100)


def rows_of(make_event, count: int, prefix: str = "e") -> list[Row]:
    return [event_row(f"{prefix}-{n}", make_event()) for n in range(count)]


def one_attempt(log_database: LogDatabase, rows: list[Row]) -> bool:
    """``write`` as a stopping log calls it once its deadline is near: one attempt, no retry."""
    deadlines = iter([None])
    return log_database.write(rows, lambda: next(deadlines, 0.0), threading.Event())


def never() -> None:
    return None


def test_batches_go_through_one_inserter_and_are_counted(log_database, scripted, make_event, metric):
    written_before = metric(WRITTEN)
    first, second = rows_of(make_event, 3), rows_of(make_event, 2, "f")
    assert log_database.write([], never, threading.Event()) is True
    assert log_database.write(first, never, threading.Event()) is True
    assert log_database.write(second, never, threading.Event()) is True
    assert scripted.batches == [first, second]
    table, columns = record_table()
    assert scripted.made == [{"using": "default", "db_timeout_s": 0.2, "table": table, "columns": columns}]
    assert metric(WRITTEN) - written_before == 5

    log_database.stop()
    assert scripted.stopped == 1
    assert log_database.write(first, never, threading.Event()) is True
    assert len(scripted.made) == 2  # a new inserter after stop()


def test_a_refused_record_is_cleaned_and_tried_alone_and_lost_only_if_refused_again(log_database, scripted,
                                                                                   recorded, make_event, metric):
    written_before = metric(WRITTEN)
    good, nul, hopeless, last = (event_row(name, make_event()) for name in ("good", "nul", "hopeless", "last"))
    nul = nul._replace(request_id="r\x00")
    scripted.hopeless.add("hopeless")
    assert log_database.write([good, nul, hopeless, last], never, threading.Event()) is True
    assert scripted.batches == [[good, nul, hopeless, last], [good], [nul], [cleaned_row(nul)], [hopeless],
                                [cleaned_row(hopeless)], [last]]
    assert recorded.lost == [(1, "the database refused record hopeless: value refused in record hopeless")]
    assert metric(WRITTEN) - written_before == 3
    assert not log_database.down


def test_failed_attempts_back_off_twice_as_long_each_time_with_jitter_up_to_a_cap(
        log_database, scripted, recorded, make_event, metric, monkeypatch):
    jitter: list[tuple[float, float]] = []
    monkeypatch.setattr(database.random, "uniform", lambda low, high: jitter.append((low, high)) or low)
    errors_before = metric(WRITE_ERRORS)
    scripted.failure = OperationalError("connection refused")
    rows = rows_of(make_event, 2)
    delays = []
    for attempt in range(1, 9):
        log_database.retry_at = 0.0  # as if the previous wait were over
        assert one_attempt(log_database, rows) is False
        delays.append(log_database.retry_at - time.monotonic())
        assert log_database.attempts == attempt
    expected = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert delays == [pytest.approx(0.75 * delay, abs=0.05) for delay in expected]
    assert set(jitter) == {(0.75, 1.0)}
    assert log_database.down and recorded.went_down == 1
    assert scripted.closed == 8  # each failure drops the connection
    assert metric(WRITE_ERRORS) - errors_before == 8
    assert len(scripted.batches) == 8


def test_the_next_attempt_waits_out_the_backoff(log_database, scripted, make_event):
    scripted.failure = OperationalError("connection refused")
    rows = rows_of(make_event, 1)
    assert one_attempt(log_database, rows) is False
    scripted.failure = None
    assert log_database.write(rows, never, threading.Event()) is True
    first, second = scripted.at
    assert second - first >= 0.07
    assert (log_database.down, log_database.attempts, log_database.retry_at) == (False, 0, 0.0)


def test_a_stopping_log_waits_no_longer_than_its_deadline(log_database, scripted, make_event, monkeypatch):
    monkeypatch.setattr(database, "BACKOFF_FIRST_S", 60.0)
    monkeypatch.setattr(database, "BACKOFF_CAP_S", 60.0)
    scripted.failure = OperationalError("connection refused")
    rows = rows_of(make_event, 1)
    assert one_attempt(log_database, rows) is False
    started = time.monotonic()
    assert log_database.write(rows, lambda: started + 0.2, threading.Event()) is False
    assert 0.15 <= time.monotonic() - started < 2
    assert log_database.write(rows, lambda: started, threading.Event()) is False  # already past it
    assert len(scripted.batches) == 1


def test_a_database_that_stays_down_is_reported_once_then_at_most_every_interval(
        log_database, scripted, make_event, caplog, monkeypatch, tmp_path):
    monkeypatch.setattr(database, "LOG_EVERY_S", 0.2)
    log_database.replay.files.append(rows_of(make_event, 3, "spilled"))
    log_database.replay.next_scan = time.monotonic() + 60
    scripted.failure = OperationalError("connection refused")
    rows = rows_of(make_event, 1)
    with caplog.at_level(logging.INFO, logger="monitoring.predictionlog"):
        for attempt in range(1, 5):
            if attempt == 3:
                time.sleep(0.25)
            log_database.retry_at = 0.0
            one_attempt(log_database, rows)
        scripted.failure = None
        log_database.retry_at = 0.0
        assert one_attempt(log_database, rows) is True
    assert [record.getMessage() for record in caplog.records] == [
        "The prediction log cannot write to the database (OperationalError: connection refused); retrying with "
        f"backoff. Records wait in memory, and past 100 of them in spill files under {tmp_path / 'spill'}.",
        "The prediction log still cannot write to the database after 3 attempts (OperationalError: connection "
        "refused); 7 records in memory, 3 in spill files.",
        "The prediction log writes to the database again after 4 failed attempts.",
    ]
    assert [record.levelno for record in caplog.records] == [logging.WARNING] * 3
    assert log_database.replay.next_scan == 0.0  # the spill files are looked at again at once


def test_spill_files_are_not_looked_at_while_an_attempt_waits(log_database, scripted, make_event):
    log_database.replay.next_scan = time.monotonic() + 60
    assert log_database.replay_wanted(flushing=True) is True
    assert log_database.replay_wanted(flushing=False) is False
    scripted.failure = OperationalError("connection refused")
    assert one_attempt(log_database, rows_of(make_event, 1)) is False
    assert log_database.replay_wanted(flushing=True) is False
    # Once the wait is over, replaying a spill file may be the attempt that finds the database back.
    log_database.retry_at = 0.0
    assert log_database.down and log_database.replay_wanted(flushing=True) is True


# -- spill files replayed --------------------------------------------------------------------


def test_a_spill_file_is_replayed_a_batch_at_a_time_and_then_removed(log_database, scripted, make_event, caplog):
    rows = rows_of(make_event, 5)
    log_database.replay.files.append(rows)
    with caplog.at_level(logging.INFO, logger="monitoring.predictionlog"):
        assert [log_database.replay_step(2) for _ in range(5)] == [True, True, True, True, False]
    assert scripted.batches == [rows[0:2], rows[2:4], rows[4:5]]
    (path,) = [record.args[0] for record in caplog.records]
    assert caplog.records[0].getMessage() == f"Replayed the spill file {path} into the database."
    assert not path.exists() and log_database.replay.files.pending == 0


def test_a_batch_that_failed_is_tried_again_as_it_was_once_the_backoff_is_over(log_database, scripted,
                                                                               make_event):
    rows = rows_of(make_event, 3)
    log_database.replay.files.append(rows)
    scripted.failure = OperationalError("connection refused")
    assert log_database.replay_step(2) is False
    assert log_database.replay_step(2) is False  # still waiting: no attempt
    assert len(scripted.batches) == 1
    scripted.failure = None
    log_database.retry_at = 0.0
    assert log_database.replay_step(2) is True
    assert log_database.replay_step(2) is True
    assert scripted.batches == [rows[0:2], rows[0:2], rows[2:3]]


def test_unreadable_lines_are_counted_lost_and_the_rest_replayed(log_database, scripted, recorded, make_event,
                                                                 tmp_path):
    first, second = rows_of(make_event, 2)
    path = tmp_path / "spill" / "predictions-1-abcdef-0001.jsonl"
    path.parent.mkdir()
    path.write_bytes(dump_row(first) + b"\n[not a row\n" + dump_row(second) + b"\n")
    assert log_database.replay_step(10) is True
    assert recorded.lost == [(1, f"unreadable lines in the spill file {path}")]
    assert scripted.batches == [[first, second]]


def test_a_spill_file_that_cannot_be_read_is_left_for_later(log_database, scripted, make_event, caplog):
    class UnreadableHandle:
        def readline(self) -> bytes:
            raise OSError("Input/output error")

        def close(self) -> None:
            pass

    log_database.replay.files.append(rows_of(make_event, 2))
    replay_file = log_database.replay.open_next()
    replay_file.handle = UnreadableHandle()
    with caplog.at_level(logging.INFO, logger="monitoring.predictionlog"):
        assert log_database.replay_step(10) is False
    assert [(record.levelno, record.getMessage()) for record in caplog.records] == [
        (logging.ERROR, f"Could not read the spill file {replay_file.path}: Input/output error; it is left for a "
                        "later attempt.")]
    assert replay_file.path.exists() and log_database.replay.current is None
    assert scripted.batches == []


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="a value no driver can bind raises ProgrammingError, which is not one of ROW_ERRORS: "
                          "the batch is retried as if the database were down, for good")
def test_a_spill_line_with_a_value_no_column_takes_does_not_block_the_replay(transactional_db, recorded, tmp_path,
                                                                            make_event):
    good = event_row(uuid.uuid4().hex, make_event())
    odd = event_row(uuid.uuid4().hex, make_event())._replace(inputs=[[5.1, 3.5]])  # an array, not JSON text
    spill = tmp_path / "spill"
    spill.mkdir()
    (spill / "predictions-1-abcdef-0001.jsonl").write_bytes(dump_row(good) + b"\n" + dump_row(odd) + b"\n")
    log_database = LogDatabase(using="default", writer="thread", db_timeout_s=0.2, replay=Replay(SpillFiles(spill)),
                               lose=recorded.lose, went_down=recorded.down, backlog=lambda: 0, spill_after=100)
    try:
        for _ in range(4):
            log_database.retry_at = 0.0
            log_database.replay_step(10)
        assert not log_database.down
        assert PredictionRecord.objects.filter(event_id=good.event_id).exists()
        assert list(spill.iterdir()) == []
    finally:
        log_database.stop()


# -- where the inserts run ---------------------------------------------------------------------


def test_the_process_writer_runs_in_a_process_unless_the_database_is_in_memory(file_database, recorded, tmp_path,
                                                                               monkeypatch, make_event, caplog):
    processes: list[dict] = []
    monkeypatch.setattr(database, "WriterProcess",
                        lambda **options: processes.append(options) or ScriptedInserter())
    monkeypatch.setattr(database, "Inserter", lambda **options: ScriptedInserter())

    def log_database(using: str, writer: str) -> LogDatabase:
        return LogDatabase(using=using, writer=writer, db_timeout_s=0.2, replay=Replay(SpillFiles(tmp_path)),
                           lose=recorded.lose, went_down=recorded.down, backlog=lambda: 0, spill_after=100)

    rows = rows_of(make_event, 1)
    with caplog.at_level(logging.INFO, logger="monitoring.predictionlog"):
        for using, writer in (("log-file", "process"), ("log-file", "thread"), ("default", "thread")):
            assert log_database(using, writer).write(rows, never, threading.Event())
        assert processes == [{"using": "log-file", "db_timeout_s": 0.2}]
        assert caplog.records == []
        assert log_database("default", "process").write(rows, never, threading.Event())
    assert len(processes) == 1
    assert [record.getMessage() for record in caplog.records] == [
        "The prediction log writes from a thread: another process cannot open an in-memory database."]
