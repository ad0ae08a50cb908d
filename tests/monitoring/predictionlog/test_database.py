"""The writer's attempts on the test database: a refused record, a locked database, retries with backoff."""

from __future__ import annotations

import logging
import time

from django.db import OperationalError

from monitoring.models import PredictionRecord
from monitoring.predictionlog import database
from tests.monitoring.predictionlog.conftest import LOST, WRITE_ERRORS, assert_exactly_once


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
