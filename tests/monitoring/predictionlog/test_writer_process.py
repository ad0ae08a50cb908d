"""The writer process: batches pickled through its pipe, a database error answered, a hung or dead child replaced."""

from __future__ import annotations

import io
import os
import pickle
import signal
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import orjson
import pytest
from django.db import DataError, OperationalError, connections

from monitoring.models import PredictionRecord
from monitoring.predictionlog import writer_process
from monitoring.predictionlog.inserter import record_table
from monitoring.predictionlog.rows import event_row, raw_row
from monitoring.predictionlog.writer_process import WriterProcess, serve
from tests.monitoring.predictionlog.conftest import served


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


# -- the child's side, run in this process -----------------------------------------------


def answers_in(data: bytes) -> list[tuple]:
    """The answers a writer process wrote: each a pickle after its length, four bytes in network order."""
    answers = []
    while data:
        size = int.from_bytes(data[:4], "big")
        answers.append(pickle.loads(data[4 : 4 + size]))
        data = data[4 + size :]
    return answers


def child_setup(table: str | None = None) -> dict:
    record_table_name, columns = record_table()
    return {"database": {}, "use_tz": True, "time_zone": "UTC", "db_timeout_s": 1.0,
            "table": table or record_table_name, "columns": list(columns)}


def test_the_child_answers_each_batch_with_its_count_or_why_it_was_refused(transactional_db, make_event):
    ids = [uuid.uuid4().hex for _ in range(3)]
    first = [tuple(event_row(ids[0], make_event())), tuple(raw_row(ids[1], served(make_event, binary=True)))]
    refused = [tuple(event_row(ids[2], make_event())._replace(received_at="not a time"))]
    batches = [("insert", first), ("insert", refused), ("insert", first)]
    # The last message is cut off: the server died mid-batch. The child stops there.
    requests = b"".join(pickle.dumps(message) for message in batches) + pickle.dumps(("insert", first))[:-3]
    answers = io.BytesIO()
    serve(child_setup(), io.BytesIO(requests), answers)

    ok, row, again = answers_in(answers.getvalue())
    assert ok == ("ok", 2) and again == ("ok", 0)
    assert row[0] == "row" and row[1].startswith("TypeError: ")
    assert {record.event_id.hex for record in PredictionRecord.objects.all()} == set(ids[:2])


def test_the_child_answers_a_database_failure_and_serves_on(transactional_db, make_event):
    batch = [tuple(event_row("e-1", make_event()))]
    requests = io.BytesIO(pickle.dumps(("insert", batch)) * 2)
    answers = io.BytesIO()
    serve(child_setup(table="no_such_table"), requests, answers)
    assert answers_in(answers.getvalue()) == [("db", "OperationalError: no such table: no_such_table")] * 2


class _SettingsOfThisProcess:
    """The test process's settings, recording what ``main`` would configure a fresh process with."""

    def __init__(self, settings) -> None:
        self._settings = settings
        self.configured: dict | None = None

    def configure(self, **options) -> None:
        self.configured = options

    def __getattr__(self, name):
        return getattr(self._settings, name)


def run_main(stdin: bytes) -> bytes:
    """``main()`` with ``stdin`` on descriptor 0 and a pipe on descriptor 1; what it wrote there."""
    saved = os.dup(0), os.dup(1)
    in_read, in_write = os.pipe()
    out_read, out_write = os.pipe()
    os.write(in_write, stdin)
    os.close(in_write)
    os.dup2(in_read, 0)
    os.dup2(out_write, 1)
    os.close(in_read)
    os.close(out_write)
    try:
        writer_process.main()
    finally:
        os.dup2(saved[0], 0)
        os.dup2(saved[1], 1)
        for fd in saved:
            os.close(fd)
    os.set_blocking(out_read, False)
    with os.fdopen(out_read, "rb") as written:
        return written.read() or b""


@pytest.fixture
def child_settings(monkeypatch):
    import django
    from django import conf

    settings = _SettingsOfThisProcess(conf.settings)
    monkeypatch.setattr(conf, "settings", settings)
    # What Django or a driver prints on start-up goes to descriptor 1.
    monkeypatch.setattr(django, "setup", lambda: os.write(1, b"printed while starting\n"))
    return settings


def test_the_child_configures_django_from_its_setup_and_answers_on_a_copy_of_stdout(
        transactional_db, make_event, child_settings, capfd):
    setup = {**child_setup(), "database": {"ENGINE": "django.db.backends.sqlite3", "NAME": "log.sqlite3"},
             "use_tz": False, "time_zone": "Europe/Paris"}
    event_id = uuid.uuid4().hex
    written = run_main(pickle.dumps(setup) + pickle.dumps(("insert", [tuple(event_row(event_id, make_event()))])))

    assert child_settings.configured == {"DATABASES": {"default": setup["database"]}, "USE_TZ": False,
                                         "TIME_ZONE": "Europe/Paris", "INSTALLED_APPS": []}
    assert answers_in(written) == [("ok", 1)]
    assert "printed while starting" in capfd.readouterr().err
    assert PredictionRecord.objects.get().event_id.hex == event_id


def test_a_child_whose_input_ends_before_its_setup_exits_at_once(child_settings):
    assert run_main(b"") == b""
    assert child_settings.configured is None


# -- the server's side -------------------------------------------------------------------


def failed(reason: str) -> str:
    """The whole message of the error a failed writer process is, as a pattern."""
    return f"^The prediction-log writer process failed: {reason}$"


class EndsTheReader:
    """A value whose unpickling ends the process that reads it, as a crash would."""

    def __reduce__(self):
        return (os._exit, (3,))


def test_the_answer_s_deadline_allows_for_slow_statements():
    assert WriterProcess(using="default", db_timeout_s=1.0).answer_timeout_s == 30.0
    assert WriterProcess(using="default", db_timeout_s=10.0).answer_timeout_s == 40.0


def test_the_writer_process_runs_in_a_session_of_its_own_and_exits_when_stopped(file_database, make_event):
    # A descriptor this process lets children inherit (a listening socket, say) stays out of the writer.
    inherited_read, inherited_write = os.pipe()
    os.set_inheritable(inherited_write, True)
    writer = WriterProcess(using="log-file", db_timeout_s=0.5)
    writer.answer_timeout_s = 5.0
    try:
        assert writer.insert([event_row("e-1", make_event())]) == 1
        process = writer._process
        # Out of the server's process group: a Ctrl-C meant for the server does not reach it.
        assert os.getsid(process.pid) == process.pid != os.getsid(0)
        pipe = os.readlink(f"/proc/self/fd/{inherited_write}")
        held = [os.readlink(f"/proc/{process.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{process.pid}/fd")]
        assert pipe not in held
        started = time.monotonic()
        writer.stop()
        assert time.monotonic() - started < 4
        assert process.returncode == 0  # it saw the end of its input and exited, it was not killed
        assert process.stdout.closed
    finally:
        writer.stop()
        os.close(inherited_read)
        os.close(inherited_write)


def test_the_writer_process_s_refusals_and_failures_come_back_as_django_s_errors(file_database, tmp_path,
                                                                                make_event):
    writer = WriterProcess(using="log-file", db_timeout_s=0.5)
    writer.answer_timeout_s = 10.0
    try:
        with pytest.raises(DataError, match="^TypeError: "):
            writer.insert([event_row("e-1", make_event())._replace(received_at="not a time")])
        pid = writer._process.pid
        assert writer.insert([event_row("e-1", make_event())]) == 1
        assert writer._process.pid == pid  # the same process, serving on

        # A process that dies while it holds a batch: an error, and the next batch goes to a new one.
        with pytest.raises(OperationalError, match=failed("the writer process exited")):
            writer.insert([event_row("e-2", make_event())._replace(inputs=EndsTheReader())])
        assert writer.insert([event_row("e-2", make_event())]) == 1
        assert writer._process.pid != pid
    finally:
        writer.stop()
    assert len(stored(file_database)) == 2

    (tmp_path / "empty.sqlite3").touch()
    file_database_settings = connections["log-file"].settings_dict
    file_database_settings["NAME"] = str(tmp_path / "empty.sqlite3")
    writer = WriterProcess(using="log-file", db_timeout_s=0.5)
    writer.answer_timeout_s = 10.0
    try:
        with pytest.raises(OperationalError, match="^OperationalError: no such table: monitoring_predictionrecord$"):
            writer.insert([event_row("e-3", make_event())])
    finally:
        writer.stop()


def test_a_writer_process_that_stops_reading_or_answering_is_a_timeout(file_database, make_event):
    writer = WriterProcess(using="log-file", db_timeout_s=0.5)
    writer.answer_timeout_s = 10.0
    try:
        assert writer.insert([event_row("first", make_event())]) == 1
        writer.answer_timeout_s = 0.2
        os.kill(writer._process.pid, signal.SIGSTOP)
        # A batch that fits in the pipe goes out; its answer never comes.
        with pytest.raises(OperationalError, match=failed("the writer process did not answer in time")):
            writer.insert([event_row("second", make_event())])
        assert writer._process is None
        writer.answer_timeout_s = 10.0
        assert writer.insert([event_row("second", make_event())]) == 1
        writer.answer_timeout_s = 0.2
        os.kill(writer._process.pid, signal.SIGSTOP)
        # One larger than the pipe's buffer cannot go out.
        big = [event_row(f"big-{n}", make_event(inputs=[[1.5] * 64] * 32)) for n in range(50)]
        with pytest.raises(OperationalError, match=failed("the writer process did not take its batch in time")):
            writer.insert(big)
    finally:
        writer.stop()
    assert len(stored(file_database)) == 2


def test_a_child_that_pauses_within_the_deadline_gets_its_batch(file_database, make_event):
    writer = WriterProcess(using="log-file", db_timeout_s=0.1)
    writer.answer_timeout_s = 10.0
    try:
        assert writer.insert([event_row("warm", make_event())]) == 1  # the child is up and connected
        pid = writer._process.pid
        # Paused (a long collection, pages swapped out) for a fifth of the time allowed, under a second.
        writer.answer_timeout_s = 0.9
        os.kill(pid, signal.SIGSTOP)
        resume = threading.Timer(0.2, os.kill, (pid, signal.SIGCONT))
        resume.start()
        # Larger than the pipe's buffer: the writer waits for the child to read, within the deadline.
        big = [event_row(f"big-{n}", make_event(inputs=[[1.5] * 64] * 32)) for n in range(20)]
        assert sum(len(row.inputs) for row in big) > 100_000
        assert writer.insert(big) == 20
        resume.join()
    finally:
        writer.stop()
