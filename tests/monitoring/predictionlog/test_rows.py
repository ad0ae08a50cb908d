"""The row format: the model's columns and widths, raw rows of served predictions, spill-file lines."""

from __future__ import annotations

import json
from decimal import Decimal

import msgpack
import numpy
import orjson
import pytest

from monitoring.events import PredictionEvent
from monitoring.models import PredictionRecord
from monitoring.predictionlog import columns
from monitoring.predictionlog.rows import (
    COLUMNS,
    Row,
    cleaned_row,
    dump_row,
    event_row,
    load_row,
    materialize,
    pg_safe,
    raw_row,
    to_json,
)
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


def test_a_spill_line_of_the_release_before_the_protocol_column_reads_as_a_websocket_row(make_event):
    row = event_row("0123456789abcdef0123456789abcdef", make_event(request_id="r-1"))
    older = orjson.dumps(list(row)[:-1])  # what a process of that release spilled
    assert load_row(older) == row._replace(protocol="websocket")
    assert load_row(orjson.dumps([*row, "extra"])) is None, "a line wider than any release wrote is not a row"


def test_a_row_keeps_the_protocol_its_request_came_by(make_event):
    event = make_event(request_id="r-2")
    event.protocol = "grpc"
    assert event_row("e-1", event).protocol == "grpc"
    event.frame, event.reply = '{"id": "r-2", "model": "iris", "inputs": [[1]]}', b'{"id":"r-2","outputs":[]}'
    assert materialize(raw_row("e-2", event)).protocol == "grpc"
    assert load_row(dump_row(event_row("e-3", event))).protocol == "grpc"
    event.protocol = "p" * 40  # never sent by the platform; cut to the column rather than refused
    assert event_row("e-4", event).protocol == "p" * columns.PROTOCOL_LENGTH


@pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])
def test_a_served_prediction_is_spilled_as_its_final_row(make_event, binary):
    row = raw_row("0123456789abcdef0123456789abcdef", served(make_event, binary))
    assert load_row(dump_row(row)) == materialize(row)


# -- events into rows --------------------------------------------------------------------


def test_an_event_row_holds_every_field_of_its_event(make_event):
    event = make_event(received_at=1_700_000_000.5, request_id="r-9", rows=3, inputs=[[1, 2.5]],
                       outputs=[{"label": "a"}], queue_ms=1.25, inference_ms=0.5, total_ms=2.125, batch_size=8)
    assert event_row("e-1", event) == Row("e-1", 1_700_000_000.5, "iris", 1, "client", "r-9", 3, "[[1,2.5]]",
                                          '[{"label":"a"}]', "ok", "", 1.25, 0.5, 2.125, 8)


@pytest.mark.parametrize(("fields", "expected"), [
    ({"request_id": None, "model": None, "api_key": None, "error": None},
     {"request_id": "", "model": "", "api_key": "", "error": ""}),
    ({"request_id": 42, "api_key": 7, "error": "bad row"}, {"request_id": "42", "api_key": "7", "error": "bad row"}),
    ({"request_id": "r" * 129, "outcome": "o" * 33, "api_key": "k" * 101},
     {"request_id": "r" * 128, "outcome": "o" * 32, "api_key": "k" * 100}),
    ({"version": None}, {"version": None}),
    ({"version": 2**31 - 1}, {"version": 2**31 - 1}),
    ({"version": -(2**31)}, {"version": -(2**31)}),
    # Past the column's 32 bits: a made-up number in a refused frame, stored as no version.
    ({"version": 2**31}, {"version": None}),
    ({"version": -(2**31) - 1}, {"version": None}),
], ids=["none", "not-text", "too-long", "no-version", "int-max", "int-min", "past-int-max", "past-int-min"])
def test_a_value_its_column_cannot_hold_is_made_to_fit(make_event, fields, expected):
    row = event_row("e-1", make_event(**fields))
    assert {name: getattr(row, name) for name in expected} == expected


@pytest.mark.parametrize(("value", "text"), [
    (None, None),
    ({"a": [1, 2.5, "x", None]}, '{"a":[1,2.5,"x",null]}'),
    (numpy.array([[1.5, 2.0]]), "[[1.5,2.0]]"),
    # What a MessagePack frame may carry: bytes (as hex), keys that are not strings.
    ({1: b"\x01\xff", "d": Decimal("1.5")}, '{"1":"01ff","d":"1.5"}'),
    # What no JSON document holds: kept as printable text.
    ([10**30], '"[1000000000000000000000000000000]"'),
    (["\ud800"], json.dumps(ascii(["\ud800"]))),
], ids=["none", "plain", "numpy", "msgpack", "huge-int", "surrogate"])
def test_inputs_and_outputs_become_json_text_whatever_they_hold(value, text):
    assert to_json(value) == text


def test_a_raw_row_with_an_error_reply_keeps_its_inputs_and_error(make_event):
    event = make_event(outcome="model_error", outputs=None, error="the model failed")
    body = {"type": "predict", "id": event.request_id, "model": "iris", "inputs": event.inputs}
    error = {"type": "error", "id": event.request_id, "error": {"code": "model_error", "message": "failed"}}
    for frame, reply in ((json.dumps(body), json.dumps(error).encode()), (msgpack.packb(body), msgpack.packb(error))):
        event.frame, event.reply = frame, reply
        row = materialize(raw_row("e-1", event))
        assert row == event_row("e-1", event)
        assert (row.inputs, row.outputs, row.error) == (to_json(event.inputs), None, "the model failed")


def test_a_raw_row_is_read_with_the_server_s_own_parser():
    # 1e999 is JSON that orjson refuses and the server's parser reads (as infinity, stored as null).
    frame = '{"type": "predict", "inputs": [[1e999, 2]]}'
    row = Row("e-1", 1.0, "m", 1, "k", "r", 1, frame, b'{"type": "prediction", "outputs": [1e999]}', "ok", "", 1.0,
              1.0, 1.0, 1)
    assert (materialize(row).inputs, materialize(row).outputs) == ("[[null,2]]", "[null]")
    # A frame that is not an object has no inputs (a raw row never raises in the writer).
    odd = row._replace(inputs="[1, 2]", outputs=b'"text"')
    assert (materialize(odd).inputs, materialize(odd).outputs) == (None, None)


# -- rows the database refuses -------------------------------------------------------------


@pytest.mark.parametrize(("row", "cleaned"), [
    (Row("a", 1.5, "m\x00", 2**31, "key\ud800", "r\x00", -3, '["a\\u0000"]', None, "ok\x00", "err\ud800", "1", 2,
         2.5, -3),
     Row("a", 1.5, "m\ufffd", None, "key?", "r\ufffd", 0, '["a\\ufffd"]', None, "ok\ufffd", "err?", None, 2.0,
         2.5, 0)),
    (Row("b", 2.0, "m", 2**31 - 1, "k", "r", 5, [1, 2], '{"x":"\x00"}', "ok", "", 1.25, None, 3, 8),
     Row("b", 2.0, "m", 2**31 - 1, "k", "r", 5, '"[1, 2]"', '{"x":"\ufffd"}', "ok", "", 1.25, None, 3.0, 8)),
    (Row("c", 3.0, "m", "1", "k", "r", None, None, None, "ok", "", None, None, None, 2**40),
     Row("c", 3.0, "m", None, "k", "r", 0, None, None, "ok", "", None, None, None, None)),
], ids=["nul-and-surrogates", "numbers-that-fit", "numbers-that-do-not"])
def test_a_refused_row_is_cleaned_into_one_every_database_stores(row, cleaned):
    assert cleaned_row(row) == cleaned


@pytest.mark.parametrize("field", ["model", "api_key", "request_id", "error"])
def test_postgresql_gets_a_nul_in_text_replaced(field):
    row = event_row("e-1", PredictionEvent(1.0, "m", 1, "k", "r", 1, [1], [2], "ok", error="e"))
    row = row._replace(**{field: "a\x00b"})
    assert getattr(pg_safe(row), field) == "a\ufffdb"
    assert pg_safe(row) == cleaned_row(row)


@pytest.mark.parametrize("field", ["inputs", "outputs"])
def test_postgresql_gets_a_nul_in_json_replaced(field):
    row = event_row("e-1", PredictionEvent(1.0, "m", 1, "k", "r", 1, [1], [2], "ok"))
    row = row._replace(**{field: '["a\\u0000b"]'})
    assert getattr(pg_safe(row), field) == '["a\\ufffdb"]'


def test_a_row_postgresql_takes_is_left_as_it_is():
    row = event_row("e-1", PredictionEvent(1.0, "m", 1, "k", "r", 1, [1], None, "invalid_input", error="bad"))
    assert pg_safe(row) is row


# -- spill-file lines ----------------------------------------------------------------------


def test_a_spill_line_keeps_what_json_can_hold_and_cleans_only_what_it_cannot(make_event):
    kept = event_row("e-1", make_event(error="a\x00b", request_id="r\x00"))
    assert load_row(dump_row(kept)) == kept
    # A lone surrogate has no UTF-8 form: that row is cleaned.
    refused = event_row("e-2", make_event(request_id="bad\ud800id"))
    assert load_row(dump_row(refused)) == cleaned_row(refused)
    assert load_row(dump_row(refused)).request_id == "bad?id"


@pytest.mark.parametrize("line", [b'["e-1", 1.0]', b"[" + b"1, " * 14 + b"1]", b"[]", b'"text"'],
                         ids=["short", "no-event-id", "empty", "not-an-array"])
def test_a_line_that_is_not_a_row_reads_as_none(line):
    assert load_row(line) is None
