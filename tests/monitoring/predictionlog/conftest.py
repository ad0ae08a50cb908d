"""Helpers of the prediction-log tests, and a database file of their own.

The fixtures they share with the other monitoring tests (logs, events, a
locked database) are in ``tests/monitoring``.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from monitoring.models import PredictionRecord

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


@pytest.fixture
def file_database(db, tmp_path):
    """A second database alias, ``log-file``, on an SQLite file with the prediction log's table.

    For what the in-memory test database cannot show: a writer process, a
    connection closed and opened again, statements outside the test's
    transaction. The alias is this thread's alone, as the log's writer
    thread's connections are, so the test may connect to it.
    """
    from django.db import connection, connections

    path = tmp_path / "log.sqlite3"
    with connection.cursor() as cursor:
        cursor.execute("SELECT sql FROM sqlite_master WHERE tbl_name = %s AND sql IS NOT NULL",
                       [PredictionRecord._meta.db_table])
        schema = [row[0] for row in cursor.fetchall()]
    with sqlite3.connect(path) as created:
        for statement in schema:
            created.execute(statement)
    default = connections["default"]
    log_file = type(default)({**default.settings_dict, "NAME": str(path), "TEST": {}}, alias="log-file")
    connections["log-file"] = log_file
    try:
        yield path
    finally:
        log_file.close()
        del connections["log-file"]


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
