"""The row format: the model's columns and widths, raw rows of served predictions, spill-file lines."""

from __future__ import annotations

import orjson
import pytest

from monitoring.models import PredictionRecord
from monitoring.predictionlog import columns
from monitoring.predictionlog.rows import COLUMNS, Row, dump_row, event_row, load_row, materialize, raw_row
from tests.monitoring.predictionlog.conftest import served


def test_columns_and_widths_match_the_model():
    fields = {field.name for field in PredictionRecord._meta.get_fields()} - {"id"}
    assert set(COLUMNS) == fields
    widths = {name: PredictionRecord._meta.get_field(name).max_length
              for name in ("model", "api_key", "request_id", "outcome")}
    assert widths == {"model": columns.MODEL_NAME_LENGTH, "api_key": columns.API_KEY_NAME_LENGTH,
                      "request_id": columns.REQUEST_ID_LENGTH, "outcome": columns.OUTCOME_LENGTH}


def test_long_text_is_cut_to_the_column(make_log, make_event):
    log = make_log()
    log.record(make_event(model="m" * 500, request_id="r" * 500, outcome="unknown_model"))
    assert log.flush(timeout_s=10)
    record = PredictionRecord.objects.get()
    assert record.model == "m" * columns.MODEL_NAME_LENGTH
    assert record.request_id == "r" * columns.REQUEST_ID_LENGTH


@pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])
def test_a_raw_row_becomes_the_row_its_event_would_have_made(make_event, binary):
    from monitoring.predictionlog.rows import is_raw, materialize
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



def test_a_spill_line_is_a_json_array_in_column_order_and_reads_back_as_its_row(make_event):
    row = event_row("0123456789abcdef0123456789abcdef", make_event(request_id="r-1", error="bad row"))
    line = dump_row(row)
    # Files written by an earlier process hold the same arrays: the order of COLUMNS is the format.
    assert dict(zip(COLUMNS, orjson.loads(line), strict=True)) == row._asdict()
    assert load_row(line) == row and type(load_row(line)) is Row
    assert load_row(line[:-5]) is None  # torn
    assert load_row(b'{"event_id": "x"}') is None


@pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])
def test_a_served_prediction_is_spilled_as_its_final_row(make_event, binary):
    row = raw_row("0123456789abcdef0123456789abcdef", served(make_event, binary))
    assert load_row(dump_row(row)) == materialize(row)
