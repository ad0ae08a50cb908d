"""The writer process: batches pickled through its pipe, a database error answered, a hung or dead child replaced."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import orjson
import pytest

from monitoring.models import PredictionRecord
from monitoring.predictionlog.rows import event_row, raw_row
from tests.monitoring.predictionlog.conftest import served


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
    from monitoring.predictionlog.writer_process import WriterProcess

    writer = WriterProcess(using="log-file", db_timeout_s=0.5)
    try:
        raw = [served(make_event, binary=number % 2 == 1) for number in range(300)]
        final = [make_event(outcome="invalid_input", outputs=None, error="bad row") for _ in range(5)]
        rows = [raw_row(f"raw-{n}", event) for n, event in enumerate(raw)]
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
    from monitoring.predictionlog.writer_process import WriterProcess

    writer = WriterProcess(using="log-file", db_timeout_s=0.5)
    try:
        # 2,000 requests of 32 rows: about 5 MB of frames and replies, many
        # times the pipe's buffer, pickled into it while the child reads.
        inputs = [[float(row), 2.5, 10.25, 0.5] for row in range(32)]
        events = [served(make_event, binary=number % 2 == 1, inputs=inputs,
                         outputs=[{"label": "setosa", "probabilities": {"setosa": 0.5, "x": 0.5}}] * 32)
                  for number in range(2000)]
        rows = [raw_row(f"big-{n}", event) for n, event in enumerate(events)]
        assert sum(len(row.inputs) + len(row.outputs) for row in rows) > 4_000_000
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

    from monitoring.predictionlog.writer_process import WriterProcess

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

    from monitoring.predictionlog.writer_process import WriterProcess

    writer = WriterProcess(using="log-file", db_timeout_s=0.2)
    try:
        holder = sqlite3.connect(file_database, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(OperationalError, match="locked"):
            writer.insert([raw_row("locked-1", served(make_event, binary=False))])
        holder.execute("ROLLBACK")
        holder.close()
        assert writer.insert([raw_row("locked-1", served(make_event, binary=False))]) == 1
    finally:
        writer.stop()


def test_a_writer_process_that_dies_is_an_error_and_is_started_again(file_database, make_event):
    from django.db import OperationalError

    from monitoring.predictionlog.writer_process import WriterProcess

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



def test_the_writer_process_imports_neither_the_log_nor_the_metrics():
    """The child runs this package's module: Prometheus (and its multiprocess files) stays out of it."""
    import subprocess
    import sys

    modules = ("monitoring.metrics", "monitoring.predictionlog.log", "prometheus_client")
    result = subprocess.run(
        [sys.executable, "-c", "import sys, monitoring.predictionlog.writer_process\n"
         f"print([name for name in {modules!r} if name in sys.modules])"],
        cwd=Path(__file__).resolve().parents[3], capture_output=True, text=True, timeout=60, check=True,
    )
    assert result.stdout.strip() == "[]"
