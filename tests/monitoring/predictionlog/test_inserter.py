"""The in-process inserter on the test database: multi-row statements, each record once, times as Django writes them."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest
from django.db import connection

from monitoring.models import PredictionRecord
from monitoring.predictionlog.inserter import ROWS_PER_STATEMENT, Inserter, TimeText, record_table
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
