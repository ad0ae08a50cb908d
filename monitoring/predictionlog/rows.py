"""Prediction records as rows: :class:`Row` tuples in the order of ``COLUMNS``, ready to insert or spill.

A row is built in one of two ways. :func:`event_row` turns an event into its
final row on the event loop (inputs and outputs as JSON text). A served
prediction takes a cheaper way: :func:`raw_row` keeps the frame the client
sent and the reply the platform encoded, as they are (text or bytes nobody
else holds), and :func:`materialize` turns them into the final row later,
where the writer runs; in the writer process, off the server's interpreter.

A spill-file line is a row as a JSON array in ``COLUMNS`` order
(:func:`dump_row`); the fields keep that order, and new ones are added last
with a default, so that files written by an earlier release replay.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from inference.codec import loads_json, loads_msgpack

from ..events import PredictionEvent
from .columns import API_KEY_NAME_LENGTH, MODEL_NAME_LENGTH, OUTCOME_LENGTH, PROTOCOL_LENGTH, REQUEST_ID_LENGTH

_MAX_FALLBACK_CHARS = 100_000
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


class Row(NamedTuple):
    """One prediction record, a field per column of ``PredictionRecord``.

    In a final row the text fields are cut to their columns' widths and the
    inputs and outputs are JSON text; a raw row (:func:`raw_row`) holds the
    event's values as they came.
    """

    event_id: str
    #: Unix seconds until the insert.
    received_at: float
    model: Any
    version: Any
    api_key: Any
    request_id: Any
    rows: Any
    #: JSON text; in a raw row, the client's frame (text or MessagePack bytes).
    inputs: Any
    #: JSON text; in a raw row, the encoded reply (bytes).
    outputs: Any
    outcome: Any
    error: Any
    queue_ms: Any
    inference_ms: Any
    total_ms: Any
    batch_size: Any
    #: Added after the first release: spill files and journals written before it lack it.
    protocol: Any = "websocket"


#: The columns of a record, in the order of a row's fields and of the JSON arrays in spill files.
COLUMNS: tuple[str, ...] = Row._fields
#: How many fields a stored row (spill-file line, journal record) may have: older releases wrote fewer.
STORED_WIDTHS: frozenset[int] = frozenset({len(COLUMNS) - 1, len(COLUMNS)})


# -- turning events into rows ---------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return str(value)


def to_json(value: Any) -> str | None:
    """``value`` as JSON text, as given where JSON can hold it; never raises."""
    if value is None:
        return None
    try:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    except TypeError:
        pass
    # What a MessagePack frame may carry: bytes, non-string keys.
    try:
        return orjson.dumps(
            value, default=_jsonable, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
        ).decode()
    except TypeError:
        # Integers beyond 64 bits, strings that are not valid Unicode: keep a printable form.
        return orjson.dumps(ascii(value)[:_MAX_FALLBACK_CHARS]).decode()


def _text(value: Any, length: int) -> str:
    if value is None:
        return ""
    if type(value) is not str:
        value = str(value)
    return value if len(value) <= length else value[:length]


def event_row(event_id: str, event: PredictionEvent) -> Row:
    """The row of one event, ready to insert or spill."""
    return _row(event_id, event.received_at, event.model, event.version, event.api_key, event.request_id,
                event.rows, to_json(event.inputs), to_json(event.outputs), event.outcome, event.error,
                event.queue_ms, event.inference_ms, event.total_ms, event.batch_size, event.protocol)


def _row(event_id: str, received_at: float, model: Any, version: Any, api_key: Any, rid: Any, rows: int,
         inputs: str | None, outputs: str | None, outcome: Any, error: Any, queue_ms: Any, inference_ms: Any,
         total_ms: Any, batch_size: Any, protocol: Any) -> Row:
    if rid is None:
        rid = ""
    elif type(rid) is not str:
        rid = str(rid)
    model = model or ""
    if version is not None and not _INT_MIN <= version <= _INT_MAX:
        version = None
    return Row(
        event_id,
        received_at,
        model if len(model) <= MODEL_NAME_LENGTH else model[:MODEL_NAME_LENGTH],
        version,
        _text(api_key, API_KEY_NAME_LENGTH),
        rid if len(rid) <= REQUEST_ID_LENGTH else rid[:REQUEST_ID_LENGTH],
        rows,
        inputs,
        outputs,
        _text(outcome, OUTCOME_LENGTH),
        error or "",
        queue_ms,
        inference_ms,
        total_ms,
        batch_size,
        _text(protocol, PROTOCOL_LENGTH),
    )


def raw_row(event_id: str, event: PredictionEvent) -> Row:
    """A served prediction's row with its inputs still in the client's frame and its outputs in the reply.

    Only for events that carry both (``event.frame`` and ``event.reply``);
    costs one tuple. :func:`materialize` makes it the row :func:`event_row`
    would have made.
    """
    return Row(event_id, event.received_at, event.model, event.version, event.api_key, event.request_id,
               event.rows, event.frame, event.reply, event.outcome, event.error, event.queue_ms,
               event.inference_ms, event.total_ms, event.batch_size, event.protocol)


def is_raw(row: Row) -> bool:
    """Whether ``row`` came from :func:`raw_row`: its outputs are the encoded reply, bytes, not JSON text."""
    return type(row.outputs) is bytes


def materialize(row: Row) -> Row:
    """The final row of a raw row (a final row is returned as it is)."""
    if not is_raw(row):
        return row
    frame, reply = row.inputs, row.outputs
    binary = type(frame) is not str
    inputs_json = outputs_json = None
    if not binary:
        # A JSON frame and its JSON reply: what orjson parsed once it writes
        # back as it was. Anything it refuses takes the general way below.
        try:
            inputs_json = orjson.dumps(orjson.loads(frame)["inputs"]).decode()
            outputs_json = orjson.dumps(orjson.loads(reply)["outputs"]).decode()
        except (orjson.JSONDecodeError, orjson.JSONEncodeError, KeyError, TypeError):
            inputs_json = None
    if inputs_json is None:
        inputs_json = to_json(_body(frame, binary).get("inputs"))
        outputs_json = to_json(_body(reply, binary).get("outputs"))
    return _row(row.event_id, row.received_at, row.model, row.version, row.api_key, row.request_id, row.rows,
                inputs_json, outputs_json, row.outcome, row.error, row.queue_ms, row.inference_ms, row.total_ms,
                row.batch_size, row.protocol)


def _body(payload: str | bytes, binary: bool) -> dict[str, Any]:
    """A frame or reply the server has already parsed or written once, read with the server's own parser."""
    body = loads_msgpack(payload) if binary and isinstance(payload, bytes) else loads_json(payload)
    return body if type(body) is dict else {}


# -- rows the database or the disk refuses ----------------------------------------------


def _clean_text(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    # PostgreSQL refuses NUL in text, and no driver encodes lone surrogates.
    return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _clean_json(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, str):
        return to_json(str(value))
    # jsonb cannot hold \u0000 either.
    return _clean_text(value).replace("\\u0000", "\\ufffd")


def _clean_int(value: Any, minimum: int = _INT_MIN) -> int | None:
    if type(value) is not int or value > _INT_MAX:
        return None
    return max(value, minimum)


def _clean_float(value: Any) -> float | None:
    return float(value) if type(value) in (int, float) else None


def cleaned_row(row: Row) -> Row:
    """A row the database refused, made storable: text without NUL or lone surrogates, numbers or NULL."""
    row = materialize(row)
    return Row(
        row.event_id, row.received_at, _clean_text(row.model), _clean_int(row.version), _clean_text(row.api_key),
        _clean_text(row.request_id), _clean_int(row.rows, 0) or 0, _clean_json(row.inputs),
        _clean_json(row.outputs), _clean_text(row.outcome), _clean_text(row.error), _clean_float(row.queue_ms),
        _clean_float(row.inference_ms), _clean_float(row.total_ms), _clean_int(row.batch_size, 0),
        _clean_text(row.protocol),
    )


def pg_safe(row: Row) -> Row:
    """The row, cleaned if PostgreSQL would refuse it for a NUL character."""
    if "\x00" in row.model or "\x00" in row.api_key or "\x00" in row.request_id or "\x00" in row.error:
        return cleaned_row(row)
    for text in (row.inputs, row.outputs):
        if text is not None and "\\u0000" in text:
            return cleaned_row(row)
    return row


# -- spill-file lines ---------------------------------------------------------------------


def dump_row(row: Row) -> bytes:
    """One spill-file line, without its newline."""
    row = materialize(row)
    # orjson writes a plain tuple as an array, and refuses tuple subclasses.
    try:
        return orjson.dumps(tuple(row))
    except TypeError:
        return orjson.dumps(tuple(cleaned_row(row)))


def load_row(line: bytes) -> Row | None:
    """The row of one spill-file line, or None if the line is not one (torn, or not a record)."""
    try:
        values = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if type(values) is list and len(values) in STORED_WIDTHS and type(values[0]) is str:
        return Row(*values)
    return None
