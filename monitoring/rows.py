"""Prediction records as rows: tuples in the order of ``COLUMNS``, ready to insert or spill.

A row is built in one of two ways. :func:`event_row` turns an event into its
final row on the event loop (inputs and outputs as JSON text). A served
prediction takes a cheaper way: :func:`raw_row` keeps the frame the client
sent and the reply the platform encoded, as they are (text or bytes nobody
else holds), and :func:`materialize` turns them into the final row later,
where the writer runs; in the writer process, off the server's interpreter.
"""

from __future__ import annotations

from typing import Any

import orjson

from inference.codec import loads_json, loads_msgpack

from .events import PredictionEvent

#: The columns of a record, in the order of the row tuples the writer builds
#: and of the JSON arrays in spill files. ``received_at`` is kept as Unix
#: seconds until the insert; ``inputs`` and ``outputs`` as JSON text.
COLUMNS = (
    "event_id", "received_at", "model", "version", "api_key", "request_id", "rows",
    "inputs", "outputs", "outcome", "error", "queue_ms", "inference_ms", "total_ms", "batch_size",
)
Row = tuple[Any, ...]

# The widths of PredictionRecord's text columns (monitoring.models; not
# imported here, so that this module loads before the app registry): longer
# values are cut, a model name in a refused frame being whatever the client sent.
MODEL_LENGTH, API_KEY_LENGTH, REQUEST_ID_LENGTH, OUTCOME_LENGTH = 64, 100, 128, 32
_MAX_FALLBACK_CHARS = 100_000
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


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
                event.queue_ms, event.inference_ms, event.total_ms, event.batch_size)


def _row(event_id: str, received_at: float, model: Any, version: Any, api_key: Any, rid: Any, rows: int,
         inputs: str | None, outputs: str | None, outcome: Any, error: Any, queue_ms: Any, inference_ms: Any,
         total_ms: Any, batch_size: Any) -> Row:
    if rid is None:
        rid = ""
    elif type(rid) is not str:
        rid = str(rid)
    model = model or ""
    if version is not None and not _INT_MIN <= version <= _INT_MAX:
        version = None
    return (
        event_id,
        received_at,
        model if len(model) <= MODEL_LENGTH else model[:MODEL_LENGTH],
        version,
        _text(api_key, API_KEY_LENGTH),
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
    )


def raw_row(event_id: str, event: PredictionEvent) -> Row:
    """A served prediction's row with its inputs still in the client's frame and its outputs in the reply.

    Only for events that carry both (``event.frame`` and ``event.reply``);
    costs one tuple. :func:`materialize` makes it the row :func:`event_row`
    would have made.
    """
    return (event_id, event.received_at, event.model, event.version, event.api_key, event.request_id,
            event.rows, event.frame, event.reply, event.outcome, event.error, event.queue_ms,
            event.inference_ms, event.total_ms, event.batch_size)


def is_raw(row: Row) -> bool:
    """Whether ``row`` came from :func:`raw_row`: its outputs are the encoded reply, bytes, not JSON text."""
    return type(row[8]) is bytes


def materialize(row: Row) -> Row:
    """The final row of a raw row (a final row is returned as it is)."""
    if not is_raw(row):
        return row
    (event_id, received_at, model, version, api_key, rid, rows, frame, reply, outcome, error,
     queue_ms, inference_ms, total_ms, batch_size) = row
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
    return _row(event_id, received_at, model, version, api_key, rid, rows, inputs_json, outputs_json,
                outcome, error, queue_ms, inference_ms, total_ms, batch_size)


def _body(payload: str | bytes, binary: bool) -> dict[str, Any]:
    """A frame or reply the server has already parsed or written once, read with the server's own parser."""
    body = loads_msgpack(payload) if binary and isinstance(payload, bytes) else loads_json(payload)
    return body if type(body) is dict else {}


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
    (event_id, received_at, model, version, api_key, rid, rows, inputs, outputs, outcome, error,
     queue_ms, inference_ms, total_ms, batch_size) = row
    return (
        event_id, received_at, _clean_text(model), _clean_int(version), _clean_text(api_key),
        _clean_text(rid), _clean_int(rows, 0) or 0, _clean_json(inputs), _clean_json(outputs),
        _clean_text(outcome), _clean_text(error), _clean_float(queue_ms), _clean_float(inference_ms),
        _clean_float(total_ms), _clean_int(batch_size, 0),
    )


def dump_row(row: Row) -> bytes:
    """One spill-file line, without its newline."""
    row = materialize(row)
    try:
        return orjson.dumps(row)
    except TypeError:
        return orjson.dumps(cleaned_row(row))


def _pg_safe(row: Row) -> Row:
    """The row, cleaned if PostgreSQL would refuse it for a NUL character."""
    for index in (2, 4, 5, 10):
        if "\x00" in row[index]:
            return cleaned_row(row)
    for index in (7, 8):
        if row[index] is not None and "\\u0000" in row[index]:
            return cleaned_row(row)
    return row


