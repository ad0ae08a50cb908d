"""Spill files: records the database could not take go to disk, and are replayed into it exactly once."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import orjson

from monitoring.models import PredictionRecord
from monitoring.predictionlog.rows import event_row
from monitoring.predictionlog.spill import SpillFiles
from tests.monitoring.predictionlog.conftest import LOST, SPILLED, assert_exactly_once, served, spill_lines


def test_past_the_high_water_mark_records_spill_and_are_replayed(make_log, make_event, lock_database, metric,
                                                                 eventually, tmp_path):
    log = make_log(buffer_records=100, batch_size=20)
    spilled_before = metric(SPILLED)
    sent = []
    with lock_database():
        for number in range(1000):
            event = make_event()
            sent.append(event.request_id)
            log.record(event)
            if number % 100 == 0:
                time.sleep(0.02)
        # With the database down, all but a tenth of the buffer goes to disk.
        eventually(lambda: spill_lines(tmp_path / "spill") >= 1000 - 10 - 20, timeout_s=10,
                   what="the spill file")
        assert metric("platform_log_spill_records") >= 1000 - 10 - 20
    assert log.flush(timeout_s=30)
    assert_exactly_once(sent)
    assert metric(SPILLED) - spilled_before >= 1000 - 30
    assert not list((tmp_path / "spill").glob("*.jsonl")), "replayed spill files are removed"
    assert metric("platform_log_spill_records") == 0
    assert metric("platform_log_buffer_records") == 0


def test_a_full_buffer_spills_even_with_the_database_up(make_log, make_event, metric, eventually):
    log = make_log(buffer_records=100, batch_size=1000, flush_interval_ms=60_000)
    spilled_before = metric(SPILLED)
    sent = []
    for number in range(300):
        event = make_event()
        sent.append(event.request_id)
        log.record(event)
        if number % 50 == 49:  # requests arrive over time, not in one burst
            time.sleep(0.05)
    eventually(lambda: metric(SPILLED) > spilled_before, timeout_s=5, what="a spill")
    assert log.flush(timeout_s=20)
    assert_exactly_once(sent)


def test_a_clean_stop_with_the_database_down_spills_everything_for_the_next_start(
    make_log, make_event, lock_database, tmp_path, metric
):
    first = make_log(buffer_records=10_000, batch_size=50)
    sent = []
    with lock_database():
        for _ in range(300):
            event = make_event()
            sent.append(event.request_id)
            first.record(event)
        assert first.stop(timeout_s=1.5)
        assert spill_lines(tmp_path / "spill") == 300
    assert PredictionRecord.objects.count() == 0

    # The next process replays the file before any event of its own.
    second = make_log()
    assert second.flush(timeout_s=20)
    assert_exactly_once(sent)
    assert not list((tmp_path / "spill").glob("*.jsonl"))


def test_replaying_records_already_in_the_database_adds_none(make_log, make_event, tmp_path):
    log = make_log()
    events = [make_event() for _ in range(40)]
    for event in events:
        log.record(event)
    assert log.flush(timeout_s=10)
    ids = list(PredictionRecord.objects.values_list("event_id", flat=True))
    # The same records, in a file left by a process that died after writing them.
    rows = [event_row(event_id.hex, event) for event_id, event in zip(sorted(ids), events, strict=True)]
    spill = SpillFiles(tmp_path / "spill")
    spill.append(rows)
    spill.close_current()
    assert log.flush(timeout_s=10)
    assert PredictionRecord.objects.count() == 40
    assert not list((tmp_path / "spill").glob("*.jsonl"))


def test_a_file_another_live_process_holds_is_left_alone(make_log, make_event, tmp_path):
    directory = tmp_path / "spill"
    directory.mkdir()
    path = directory / "predictions-99999-abcdef-0001.jsonl"
    rows = [event_row(os.urandom(16).hex(), make_event()) for _ in range(5)]
    path.write_bytes(b"".join(orjson.dumps(tuple(row)) + b"\n" for row in rows))
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, sys, time; f = open(sys.argv[1], 'ab'); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('locked', flush=True); time.sleep(60)", str(path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        log = make_log()
        assert log.flush(timeout_s=10)
        assert PredictionRecord.objects.count() == 0
        assert path.exists()
    finally:
        # The holder dies without cleaning up; the kernel releases its lock.
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert log.flush(timeout_s=10)
    assert PredictionRecord.objects.count() == 5
    assert not path.exists()


def test_a_torn_last_line_is_counted_lost_and_the_rest_replayed(make_log, make_event, tmp_path, metric, caplog):
    directory = tmp_path / "spill"
    directory.mkdir()
    rows = [event_row(os.urandom(16).hex(), make_event()) for _ in range(3)]
    torn = orjson.dumps(tuple(rows[0]))[:-10]
    (directory / "predictions-1-aaaaaa-0001.jsonl").write_bytes(
        b"".join(orjson.dumps(tuple(row)) + b"\n" for row in rows) + torn
    )
    lost_before = metric(LOST)
    log = make_log()
    with caplog.at_level(logging.ERROR, logger="monitoring.predictionlog"):
        assert log.flush(timeout_s=10)
    assert PredictionRecord.objects.count() == 3
    assert metric(LOST) - lost_before == 1
    assert "1 prediction records are lost: unreadable lines in the spill file" in caplog.text


def test_served_predictions_spill_and_replay_as_final_rows(make_log, make_event, lock_database, tmp_path):
    log = make_log(buffer_records=10, db_timeout_s=0.05)
    sent = [served(make_event, binary=number % 2 == 1) for number in range(40)]
    with lock_database():
        for event in sent:
            log.record(event)
        deadline = time.monotonic() + 10
        while spill_lines(tmp_path / "spill") < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        # The check below reads the spill files: it must have some to read.
        assert spill_lines(tmp_path / "spill") >= 30, "the records went to spill files while the database was locked"
    for path in (tmp_path / "spill").glob("predictions-*.jsonl"):
        for line in path.read_bytes().splitlines():
            outputs = orjson.loads(line)[8]  # the outputs as JSON text, not the reply
            assert orjson.loads(outputs) == sent[0].outputs
    assert log.flush(timeout_s=20)
    assert_exactly_once([event.request_id for event in sent])
    record = PredictionRecord.objects.get(request_id=sent[1].request_id)
    assert record.inputs == sent[1].inputs and record.outputs == sent[1].outputs

