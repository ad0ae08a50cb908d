"""The prediction-log writer, on the test database: batches, a locked database, spill files and their replay."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
from django.core.exceptions import ImproperlyConfigured

from monitoring import recorder
from monitoring.models import PredictionRecord
from monitoring.recorder import BURST_RECORDS, COLUMNS, PredictionLog, SpillFiles, event_row

WRITTEN = "platform_log_records_written_total"
SPILLED = "platform_log_records_spilled_total"
LOST = "platform_log_records_lost_total"
WRITE_ERRORS = "platform_log_write_errors_total"


def spill_lines(directory: Path) -> int:
    return sum(path.read_bytes().count(b"\n") for path in directory.glob("predictions-*.jsonl"))


def assert_exactly_once(request_ids: list[str]) -> None:
    stored = list(PredictionRecord.objects.values_list("request_id", flat=True))
    assert len(stored) == len(request_ids), f"{len(stored)} records for {len(request_ids)} requests"
    assert sorted(stored) == sorted(request_ids)


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


def test_the_sink_returns_at_once_while_the_database_is_locked(make_log, make_event, lock_database):
    log = make_log(batch_size=10)
    events = [make_event() for _ in range(5000)]
    with lock_database():
        started = time.perf_counter()
        for event in events:
            log.record(event)
        elapsed = time.perf_counter() - started
    assert elapsed < 0.5, f"recording 5000 events took {elapsed:.3f} s"
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


# -- the database unavailable ---------------------------------------------------------


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
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
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
    torn = orjson.dumps(rows[0])[:-10]
    (directory / "predictions-1-aaaaaa-0001.jsonl").write_bytes(
        b"".join(orjson.dumps(row) + b"\n" for row in rows) + torn
    )
    lost_before = metric(LOST)
    log = make_log()
    with caplog.at_level(logging.ERROR, logger="monitoring.recorder"):
        assert log.flush(timeout_s=10)
    assert PredictionRecord.objects.count() == 3
    assert metric(LOST) - lost_before == 1
    assert "1 prediction records are lost: unreadable lines in the spill file" in caplog.text


# -- what cannot be kept --------------------------------------------------------------


def test_records_that_fit_neither_database_nor_disk_are_counted_and_logged(
    make_log, make_event, lock_database, tmp_path, metric, caplog
):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the spill directory should be")
    log = make_log(buffer_records=10_000, batch_size=50, spill_dir=blocker / "spill")
    lost_before = metric(LOST)
    with caplog.at_level(logging.ERROR, logger="monitoring.recorder"), lock_database():
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
    with caplog.at_level(logging.ERROR, logger="monitoring.recorder"), lock_database():
        for _ in range(sent):
            log.record(make_event())
        assert len(log._buffer) <= ceiling
        assert log._dropped >= 5000 - 200  # less what the threads took out of the buffer meanwhile
        assert log.stop(timeout_s=2.0)
    # Dropped at the sink, and then the rest when the stop could neither write nor spill them.
    assert metric(LOST) - lost_before == sent
    assert "the disk did not keep up" in caplog.text


def test_columns_and_widths_match_the_model():
    fields = {field.name for field in PredictionRecord._meta.get_fields()} - {"id"}
    assert set(COLUMNS) == fields
    widths = {name: PredictionRecord._meta.get_field(name).max_length
              for name in ("model", "api_key", "request_id", "outcome")}
    assert widths == {"model": recorder.MODEL_LENGTH, "api_key": recorder.API_KEY_LENGTH,
                      "request_id": recorder.REQUEST_ID_LENGTH, "outcome": recorder.OUTCOME_LENGTH}


def test_long_text_is_cut_to_the_column(make_log, make_event):
    log = make_log()
    log.record(make_event(model="m" * 500, request_id="r" * 500, outcome="unknown_model"))
    assert log.flush(timeout_s=10)
    record = PredictionRecord.objects.get()
    assert record.model == "m" * recorder.MODEL_LENGTH
    assert record.request_id == "r" * recorder.REQUEST_ID_LENGTH


# -- a whole process -----------------------------------------------------------------------


def test_a_process_that_exits_without_its_shutdown_hooks_still_writes_its_records(tmp_path):
    from tests.support import services

    env = services.platform_env(tmp_path / "data", {"PLATFORM_PRELOAD_MODELS": "0"})
    services.manage("migrate", "--no-input", env=env)
    script = (
        "import time\n"
        "from monitoring import events\n"
        "from monitoring.events import PredictionEvent\n"
        "for number in range(250):\n"
        "    events.prediction(PredictionEvent(received_at=time.time(), model='iris', version=1, api_key='k',\n"
        "                                      request_id=f'exit-{number}', rows=1, inputs=[[1.0, 2.0, 3.0, 4.0]],\n"
        "                                      outputs=[{'value': 1.0}], outcome='ok'))\n"
    )
    services.manage("shell", "-c", script, env=env)
    with sqlite3.connect(tmp_path / "data" / "platform.sqlite3") as connection:
        ids = [row[0] for row in connection.execute("SELECT request_id FROM monitoring_predictionrecord")]
    assert sorted(ids) == sorted(f"exit-{number}" for number in range(250))


# -- served predictions: the frame and the reply as they are, parsed by the writer -------------


def served(make_event, binary: bool, **fields):
    """An event as the consumer reports a served prediction: with its frame and its encoded reply."""
    import msgpack

    event = make_event(**fields)
    body = {"type": "predict", "id": event.request_id, "model": "iris", "inputs": event.inputs}
    reply = {"type": "prediction", "id": event.request_id, "model": "iris", "version": 1,
             "outputs": event.outputs, "batch_size": 8, "timing": {"queue_ms": 1.25}}
    if binary:
        event.frame, event.reply = msgpack.packb(body), msgpack.packb(reply)
    else:
        # The standard library's encoder: a client may send integers orjson cannot write.
        event.frame, event.reply = json.dumps(body), json.dumps(reply).encode()
    return event


@pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])
def test_a_raw_row_becomes_the_row_its_event_would_have_made(make_event, binary):
    from monitoring.rows import is_raw, materialize, raw_row
    from streaming.protocol import decode

    for fields in ({}, {"inputs": [[1, 2.5, 10**30, 4]], "request_id": 99},
                   {"inputs": [{"a": "\u00e9\u4e2d", "b": None}], "model": "m" * 300}):
        if binary and str(10**30) in str(fields.get("inputs")):
            continue  # MessagePack has no integers past 64 bits
        event = served(make_event, binary, **fields)
        row = raw_row("id-1", event)
        assert is_raw(row)
        # The event carries what the server parsed from the frame (orjson reads 10**30 as a float).
        parsed = decode(None, event.frame) if binary else decode(event.frame, None)
        plain = make_event(**{name: getattr(event, name) for name in
                              ("received_at", "request_id", "outputs", "model")}, inputs=parsed.body["inputs"])
        assert materialize(row) == event_row("id-1", plain)
        assert materialize(materialize(row)) == materialize(row)


def test_served_predictions_spill_and_replay_as_final_rows(make_log, make_event, lock_database, tmp_path):
    log = make_log(buffer_records=10, db_timeout_s=0.05)
    sent = [served(make_event, binary=number % 2 == 1) for number in range(40)]
    with lock_database():
        for event in sent:
            log.record(event)
        deadline = time.monotonic() + 10
        while spill_lines(tmp_path / "spill") < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
    for path in (tmp_path / "spill").glob("predictions-*.jsonl"):
        for line in path.read_bytes().splitlines():
            outputs = orjson.loads(line)[8]  # the outputs as JSON text, not the reply
            assert orjson.loads(outputs) == sent[0].outputs
    assert log.flush(timeout_s=20)
    assert_exactly_once([event.request_id for event in sent])
    record = PredictionRecord.objects.get(request_id=sent[1].request_id)
    assert record.inputs == sent[1].inputs and record.outputs == sent[1].outputs


@pytest.fixture
def file_database(db, tmp_path):
    """A second database alias on an SQLite file with the prediction log's table, for a writer process."""
    from django.db import connection, connections

    path = tmp_path / "log.sqlite3"
    with connection.cursor() as cursor:
        cursor.execute("SELECT sql FROM sqlite_master WHERE tbl_name = %s AND sql IS NOT NULL",
                       [PredictionRecord._meta.db_table])
        schema = [row[0] for row in cursor.fetchall()]
    with sqlite3.connect(path) as created:
        for statement in schema:
            created.execute(statement)
    connections.settings["log-file"] = {**connection.settings_dict, "NAME": str(path), "TEST": {}}
    try:
        yield path
    finally:
        del connections.settings["log-file"]
        if hasattr(connections._connections, "log-file"):
            del connections["log-file"]


def stored(path: Path) -> dict[str, tuple]:
    with sqlite3.connect(path) as reader:
        return {row[0]: row[1:] for row in reader.execute(
            "SELECT request_id, model, version, inputs, outputs, outcome, total_ms FROM monitoring_predictionrecord")}


def test_the_writer_process_inserts_raw_and_final_rows_once(file_database, make_event):
    from monitoring.inserter import WriterProcess

    writer = WriterProcess(using="log-file", db_timeout_s=0.5)
    try:
        raw = [served(make_event, binary=number % 2 == 1) for number in range(300)]
        final = [make_event(outcome="invalid_input", outputs=None, error="bad row") for _ in range(5)]
        rows = [recorder.raw_row(f"raw-{n}", event) for n, event in enumerate(raw)]
        rows += [event_row(f"final-{n}", event) for n, event in enumerate(final)]
        assert writer.insert(rows) == 305
        assert writer.insert(rows[:10]) == 0  # already there: a retry or a replay adds nothing
        records = stored(file_database)
        assert len(records) == 305
        model, version, inputs, outputs, outcome, total_ms = records[raw[3].request_id]
        assert (model, version, outcome, total_ms) == ("iris", 1, "ok", 2.125)
        assert orjson.loads(inputs) == raw[3].inputs and orjson.loads(outputs) == raw[3].outputs
        assert records[final[0].request_id][3:5] == (None, "invalid_input")
    finally:
        writer.stop()


def test_a_batch_of_megabytes_goes_through_the_writer_process_whole(file_database, make_event):
    from monitoring.inserter import WriterProcess

    writer = WriterProcess(using="log-file", db_timeout_s=0.5)
    try:
        # 2,000 requests of 32 rows: about 5 MB of frames and replies, many
        # times the pipe's buffer, pickled into it while the child reads.
        inputs = [[float(row), 2.5, 10.25, 0.5] for row in range(32)]
        events = [served(make_event, binary=number % 2 == 1, inputs=inputs,
                         outputs=[{"label": "setosa", "probabilities": {"setosa": 0.5, "x": 0.5}}] * 32)
                  for number in range(2000)]
        rows = [recorder.raw_row(f"big-{n}", event) for n, event in enumerate(events)]
        assert sum(len(row[7]) + len(row[8]) for row in rows) > 4_000_000
        assert writer.insert(rows) == 2000
        records = stored(file_database)
        assert len(records) == 2000
        _model, _version, stored_inputs, stored_outputs, _outcome, _total = records[events[1999].request_id]
        assert orjson.loads(stored_inputs) == inputs
        assert orjson.loads(stored_outputs) == events[1999].outputs
    finally:
        writer.stop()


def test_a_writer_process_that_stops_reading_is_a_timeout_not_a_hang(file_database, make_event):
    from django.db import OperationalError

    from monitoring.inserter import WriterProcess

    writer = WriterProcess(using="log-file", db_timeout_s=0.5)
    try:
        assert writer.insert([event_row("first", make_event())]) == 1
        stopped = writer._process.pid
        os.kill(stopped, signal.SIGSTOP)
        writer.answer_timeout_s = 0.5
        # Larger than the pipe's buffer: sending it cannot finish while the child is stopped.
        big = [event_row(f"big-{n}", make_event(inputs=[[1.5] * 64] * 32)) for n in range(200)]
        started = time.monotonic()
        with pytest.raises(OperationalError, match="did not take its batch in time"):
            writer.insert(big)
        assert time.monotonic() - started < 10
        assert writer._process is None
        assert writer.insert(big) == 200  # a new process, the same batch
        assert writer._process.pid != stopped
    finally:
        writer.stop()
    assert len(stored(file_database)) == 201


def test_the_writer_process_reports_a_locked_database_and_carries_on(file_database, make_event):
    from django.db import OperationalError

    from monitoring.inserter import WriterProcess

    writer = WriterProcess(using="log-file", db_timeout_s=0.2)
    try:
        holder = sqlite3.connect(file_database, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(OperationalError, match="locked"):
            writer.insert([recorder.raw_row("locked-1", served(make_event, binary=False))])
        holder.execute("ROLLBACK")
        holder.close()
        assert writer.insert([recorder.raw_row("locked-1", served(make_event, binary=False))]) == 1
    finally:
        writer.stop()


def test_a_writer_process_that_dies_is_an_error_and_is_started_again(file_database, make_event):
    from django.db import OperationalError

    from monitoring.inserter import WriterProcess

    writer = WriterProcess(using="log-file", db_timeout_s=0.5)
    try:
        assert writer.insert([event_row("first", make_event())]) == 1
        first_pid = writer._process.pid
        os.kill(first_pid, signal.SIGKILL)
        writer._process.wait()
        assert writer.insert([event_row("second", make_event())]) == 1
        second_pid = writer._process.pid
        assert second_pid != first_pid

        # A process that stops answering is given up on, killed, and replaced on the next batch.
        writer.answer_timeout_s = 0.5
        os.kill(second_pid, signal.SIGSTOP)
        with pytest.raises(OperationalError, match="writer process"):
            writer.insert([event_row("third", make_event())])
        assert writer._process is None
        assert writer.insert([event_row("third", make_event())]) == 1
        assert writer._process.pid not in (first_pid, second_pid)
    finally:
        writer.stop()
    assert len(stored(file_database)) == 3
