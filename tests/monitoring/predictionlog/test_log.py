"""The prediction log on the test database: every event one record, the sink never waits, bounds hold."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from django.core.exceptions import ImproperlyConfigured

from monitoring.models import PredictionRecord
from monitoring.predictionlog import PredictionLog
from monitoring.predictionlog.log import BURST_RECORDS
from tests.monitoring.predictionlog.conftest import LOST, WRITTEN

# -- writing --------------------------------------------------------------------------


def test_every_event_becomes_one_record_with_its_fields(make_log, make_event, metric):
    log = make_log(batch_size=50)
    written_before = metric(WRITTEN)
    sent = [make_event() for _ in range(120)]
    error = make_event(outcome="invalid_input", outputs=None, queue_ms=None, inference_ms=None,
                       batch_size=None, error="row 1: expected 4 features, got 3", request_id=17,
                       api_key=None)
    for event in [*sent, error]:
        log.record(event)
    assert log.flush(timeout_s=10)

    assert PredictionRecord.objects.count() == 121
    assert metric(WRITTEN) - written_before == 121
    first = PredictionRecord.objects.get(request_id=sent[0].request_id)
    assert first.received_at.timestamp() == pytest.approx(sent[0].received_at, abs=1e-6)
    assert (first.model, first.version, first.api_key, first.rows) == ("iris", 1, "client", 2)
    assert first.inputs == sent[0].inputs
    assert first.outputs == sent[0].outputs
    assert first.outcome == "ok" and first.error == ""
    assert (first.queue_ms, first.inference_ms, first.total_ms, first.batch_size) == (1.25, 0.5, 2.125, 8)

    failed = PredictionRecord.objects.get(request_id="17")
    assert failed.outcome == "invalid_input"
    assert failed.error == "row 1: expected 4 features, got 3"
    assert failed.outputs is None and failed.queue_ms is None and failed.batch_size is None
    assert failed.api_key == ""
    assert failed.total_ms == 2.125
    assert len(set(PredictionRecord.objects.values_list("event_id", flat=True))) == 121


def test_a_full_batch_is_written_without_waiting_for_the_interval(make_log, make_event, eventually):
    log = make_log(batch_size=20, flush_interval_ms=60_000)
    for _ in range(20):
        log.record(make_event())
    eventually(lambda: PredictionRecord.objects.count() == 20, timeout_s=5, what="the full batch")
    log.record(make_event())
    time.sleep(0.5)
    assert PredictionRecord.objects.count() == 20, "a partial batch waits for the interval"


def test_a_partial_batch_is_written_after_the_interval(make_log, make_event, eventually):
    log = make_log(batch_size=500, flush_interval_ms=100)
    for _ in range(3):
        log.record(make_event())
    eventually(lambda: PredictionRecord.objects.count() == 3, timeout_s=5, what="the interval's batch")


def test_large_inputs_are_stored_as_given(make_log, make_event):
    log = make_log()
    inputs = [[row * 64 + column + 0.5 for column in range(64)] for row in range(1024)]
    log.record(make_event(model="digits", rows=1024, inputs=inputs, outputs=[{"value": 1.0}] * 1024))
    assert log.flush(timeout_s=10)
    record = PredictionRecord.objects.get()
    assert record.inputs == inputs
    assert record.rows == 1024


def test_what_json_cannot_hold_is_kept_in_a_readable_form(make_log, make_event):
    log = make_log()
    log.record(make_event(request_id="bytes", inputs=[b"\x00\x01", {1: 2.0}], outcome="invalid_input"))
    log.record(make_event(request_id="bigint", inputs=[[2**70]], outcome="invalid_input"))
    assert log.flush(timeout_s=10)
    assert PredictionRecord.objects.get(request_id="bytes").inputs == ["0001", {"1": 2.0}]
    assert "1180591620717411303424" in PredictionRecord.objects.get(request_id="bigint").inputs


def test_the_sink_returns_at_once_while_the_database_is_locked(make_log, make_event, lock_database):
    log = make_log(batch_size=10, db_timeout_s=5.0)
    events = [make_event() for _ in range(5000)]
    with lock_database():
        started = time.perf_counter()
        for event in events:
            log.record(event)
        elapsed = time.perf_counter() - started
        # A sink that waited for the locked database would wait out its 5 s
        # timeout at least once; the records are all taken meanwhile.
        assert elapsed < 5.0, f"recording 5000 events took {elapsed:.3f} s"
        assert log._in_memory() + log._held > 0 or log.spill.pending > 0
    assert log.flush(timeout_s=20)
    assert PredictionRecord.objects.count() == 5000


def test_settings_are_checked_when_the_log_is_made(tmp_path):
    with pytest.raises(ImproperlyConfigured, match="PLATFORM_LOG_BATCH_SIZE must be at least 1"):
        PredictionLog(batch_size=0, spill_dir=tmp_path)
    with pytest.raises(ImproperlyConfigured, match="PLATFORM_LOG_FLUSH_INTERVAL_MS"):
        PredictionLog(flush_interval_ms=0, spill_dir=tmp_path)
    with pytest.raises(ImproperlyConfigured, match="PLATFORM_LOG_BUFFER_RECORDS must be at least 10"):
        PredictionLog(buffer_records=5, spill_dir=tmp_path)


def test_no_thread_runs_before_the_first_event(make_log, make_event):
    log = make_log()
    assert not log.running
    assert not any(thread.name.startswith("prediction-log") for thread in threading.enumerate()
                   if thread.is_alive() and getattr(thread, "_target", None) is not None
                   and getattr(thread._target, "__self__", None) is log)
    log.record(make_event())
    assert log.running



# -- what cannot be kept --------------------------------------------------------------


def test_records_that_fit_neither_database_nor_disk_are_counted_and_logged(
    make_log, make_event, lock_database, tmp_path, metric, caplog
):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the spill directory should be")
    log = make_log(buffer_records=10_000, batch_size=50, spill_dir=blocker / "spill")
    lost_before = metric(LOST)
    with caplog.at_level(logging.ERROR, logger="monitoring.predictionlog"), lock_database():
        for _ in range(120):
            log.record(make_event())
        assert log.stop(timeout_s=1.0)
    assert metric(LOST) - lost_before == 120
    assert "120 prediction records are lost" in caplog.text or "prediction records are lost" in caplog.text
    assert "Could not append" in caplog.text


def test_far_past_the_buffer_new_records_are_dropped_and_counted(
    make_log, make_event, lock_database, tmp_path, metric, caplog
):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    log = make_log(buffer_records=100, batch_size=10, spill_dir=blocker / "spill")
    ceiling = 100 + BURST_RECORDS
    sent = ceiling + 5000
    lost_before = metric(LOST)
    with caplog.at_level(logging.ERROR, logger="monitoring.predictionlog"), lock_database():
        for _ in range(sent):
            log.record(make_event())
        assert len(log._buffer) <= ceiling
        assert log._dropped >= 5000 - 200  # less what the threads took out of the buffer meanwhile
        assert log.stop(timeout_s=2.0)
    # Dropped at the sink, and then the rest when the stop could neither write nor spill them.
    assert metric(LOST) - lost_before == sent
    assert "the disk did not keep up" in caplog.text

