"""The protocol's frames, one function at a time: decoding, the id, the type, a predict frame's fields, replies."""

from __future__ import annotations

import json
import math

import msgpack
import numpy as np
import pytest

from streaming import protocol
from streaming.protocol import Frame, PredictRequest, ProtocolError


def refused(call, *args):
    """The ProtocolError ``call(*args)`` raises."""
    with pytest.raises(ProtocolError) as excinfo:
        call(*args)
    return excinfo.value


def test_this_is_version_1_with_ids_of_at_most_128_characters():
    assert protocol.PROTOCOL_VERSION == 1
    assert protocol.MAX_ID_LENGTH == 128


# -- decode ---------------------------------------------------------------------------


def test_a_text_frame_is_a_json_object():
    text = '{"id": "c-17", "inputs": [[5.1, 3.5]], "model": "iris"}'
    assert protocol.decode(text, None) == Frame(body={"id": "c-17", "inputs": [[5.1, 3.5]], "model": "iris"})


def test_a_binary_frame_is_a_messagepack_map():
    data = msgpack.packb({"id": 17, "inputs": [[5.1, 3.5]], "blob": b"\x00\xff"}, use_bin_type=True)
    assert protocol.decode(None, data) == Frame(body={"id": 17, "inputs": [[5.1, 3.5]], "blob": b"\x00\xff"})


@pytest.mark.parametrize(
    ("text", "data", "message"),
    [
        (None, None, "The frame is empty."),
        ("[1, 2]", None, "The frame must be a JSON object."),
        ('"iris"', None, "The frame must be a JSON object."),
        ("null", None, "The frame must be a JSON object."),
        (None, msgpack.packb([1, 2]), "The frame must be a MessagePack map."),
        (None, msgpack.packb(None), "The frame must be a MessagePack map."),
        ("{not json", None, "The frame is not valid JSON: unexpected character, expected a string key."),
        ("", None, "The frame is not valid JSON: Input is a zero-length, empty document."),
        ('{"x": NaN}', None, "The frame is not valid JSON: unexpected character, expected a JSON value."),
        ('{"x": -Infinity}', None, "The frame is not valid JSON: no digit after sign."),
        ("[" * 100_000, None, "The frame is not valid JSON: depth limit exceeded (nested too deeply)."),
        (None, b"", "The frame is not valid MessagePack: Unpack failed: incomplete input."),
        (None, b"\x81\x01\x02", "The frame is not valid MessagePack: int is not allowed for map key when "
                                "strict_map_key=True."),
        (None, b"\x91" * 100_000 + b"\x90", "The frame is not valid MessagePack: it is nested too deeply."),
    ],
    ids=["empty", "array", "string", "null", "msgpack-array", "msgpack-nil", "broken", "zero-length", "nan",
         "infinity", "deep-json", "msgpack-empty", "msgpack-int-key", "deep-msgpack"],
)
def test_frames_that_are_not_an_object_are_invalid_json_with_a_sentence_saying_why(text, data, message):
    error = refused(protocol.decode, text, data)
    assert (error.code, error.message, str(error)) == ("invalid_json", message, message)
    assert error.request_id is None and error.extra == {} and error.entry is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xc1", "The frame is not valid MessagePack: FormatError."),
        (b"\x80\x01", "The frame is not valid MessagePack: unpack(b) received extra data."),
    ],
    ids=["reserved-byte", "extra-data"],
)
def test_messagepack_reasons_read_as_one_sentence(data, message):
    assert refused(protocol.decode, None, data).message == message


def test_a_number_no_double_can_hold_is_parsed_for_the_schema_to_refuse():
    frame = protocol.decode('{"inputs": [[1e999, -1e999, 123456789012345678901234567890]]}', None)
    assert frame.body == {"inputs": [[math.inf, -math.inf, 123456789012345678901234567890]]}


def test_a_frame_parsed_by_the_standard_parser_still_says_orjson_s_reason_when_refused():
    # 1e999 sends the frame to the standard parser, which refuses the NaN as orjson did.
    error = refused(protocol.decode, '{"a": 1e999, "b": NaN}', None)
    assert error.message == "The frame is not valid JSON: number is infinity when parsed as double."


# -- the id -------------------------------------------------------------------------


@pytest.mark.parametrize("rid", ["c-17", "", "x" * 128, "été", "🙂", 0, 2**63 - 1, -(2**63)])
def test_ids_are_strings_up_to_128_characters_or_64_bit_integers(rid):
    assert protocol.request_id({"id": rid}) == rid


def test_a_frame_without_an_id_or_with_a_null_one_has_none():
    assert protocol.request_id({}) is None
    assert protocol.request_id({"id": None}) is None


@pytest.mark.parametrize(
    ("rid", "message"),
    [
        ("x" * 129, "id must be at most 128 characters."),
        ("\ud800", "id must be valid Unicode text (no lone surrogates)."),
        ("c-\udfff", "id must be valid Unicode text (no lone surrogates)."),
        (2**63, "An integer id must fit in 64 bits."),
        (-(2**63) - 1, "An integer id must fit in 64 bits."),
        (True, "id must be a string or an integer."),
        (1.0, "id must be a string or an integer."),
        ([1], "id must be a string or an integer."),
        ({"id": 1}, "id must be a string or an integer."),
        (b"c-17", "id must be a string or an integer."),
    ],
)
def test_other_ids_are_invalid_request_answered_with_a_null_id(rid, message):
    error = refused(protocol.request_id, {"id": rid})
    assert (error.code, error.message, error.request_id) == ("invalid_request", message, None)


# -- the type -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["predict", "ping", "models", "auth"])
def test_the_four_types(kind):
    assert protocol.frame_type({"type": kind}, "c-1") == kind


def test_the_type_defaults_to_predict():
    assert protocol.frame_type({"inputs": [[1]]}, None) == "predict"


@pytest.mark.parametrize(("kind", "shown"), [("explode", "'explode'"), ("Predict", "'Predict'"), (None, "None"),
                                             (["ping"], "['ping']"), (1, "1")])
def test_any_other_type_is_invalid_request_with_the_frame_s_id(kind, shown):
    error = refused(protocol.frame_type, {"type": kind}, "c-9")
    assert (error.code, error.request_id) == ("invalid_request", "c-9")
    assert error.message == f"Unknown type {shown}; expected one of predict, ping, models, auth."


# -- a predict frame's fields ---------------------------------------------------------------


def test_a_predict_frame_names_its_model_version_and_rows():
    body = {"id": "c-17", "model": "iris", "version": 3, "inputs": [[5.1, 3.5, 1.4, 0.2]]}
    assert protocol.predict_request(body, "c-17", None) == PredictRequest("c-17", "iris", 3, [[5.1, 3.5, 1.4, 0.2]])


@pytest.mark.parametrize("version", [1, 2, 10**6])
def test_versions_count_from_1(version):
    assert protocol.predict_request({"model": "iris", "version": version, "inputs": []}, 1, None).version == version


def test_the_model_defaults_to_the_endpoint_s_and_the_version_to_none():
    assert protocol.predict_request({"inputs": []}, 4, "digits") == PredictRequest(4, "digits", None, [])
    assert protocol.predict_request({"model": "iris", "inputs": [{}]}, 4, "digits").model == "iris"
    assert protocol.predict_request({"model": "iris", "version": None, "inputs": []}, 4, None).version is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"inputs": [[1]]}, "model is required on this endpoint."),
        ({"model": None, "inputs": [[1]]}, "model is required on this endpoint."),
        ({"model": 7, "inputs": [[1]]}, "model must be a string."),
        ({"model": ["iris"], "inputs": [[1]]}, "model must be a string."),
        ({"model": "iris", "version": 0, "inputs": [[1]]}, "version must be a positive integer."),
        ({"model": "iris", "version": -1, "inputs": [[1]]}, "version must be a positive integer."),
        ({"model": "iris", "version": "1", "inputs": [[1]]}, "version must be a positive integer."),
        ({"model": "iris", "version": 1.0, "inputs": [[1]]}, "version must be a positive integer."),
        ({"model": "iris", "version": True, "inputs": [[1]]}, "version must be a positive integer."),
        ({"model": "iris"}, "inputs is required."),
        ({"model": "iris", "inputs": None}, "inputs must be a list of rows."),
        ({"model": "iris", "inputs": "5.1,3.5"}, "inputs must be a list of rows."),
        ({"model": "iris", "inputs": {"a": 1}}, "inputs must be a list of rows."),
        ({"model": "iris", "inputs": ([1, 2],)}, "inputs must be a list of rows."),
    ],
)
def test_a_predict_frame_missing_or_mistyping_a_field_is_invalid_request(body, message):
    error = refused(protocol.predict_request, body, "c-3", None)
    assert (error.code, error.message, error.request_id) == ("invalid_request", message, "c-3")


def test_the_endpoint_model_does_not_excuse_a_mistyped_one():
    error = refused(protocol.predict_request, {"model": 7, "inputs": []}, 1, "iris")
    assert error.message == "model must be a string."


# -- replies ------------------------------------------------------------------------------

REPLY = {"type": "prediction", "id": "c-17", "outputs": [{"label": "setosa", "probabilities": {"setosa": 0.97}}],
         "timing": {"total_ms": 2.1}}


def test_a_reply_to_a_text_frame_is_compact_json_text():
    text, data = protocol.encode(REPLY, binary=False)
    assert data is None
    assert text == json.dumps(REPLY, separators=(",", ":"))
    assert protocol.encode_bytes(REPLY, binary=False) == text.encode()


def test_a_reply_to_a_binary_frame_is_messagepack_with_bytes_kept_apart_from_text():
    message = {**REPLY, "blob": b"\xff\x00"}
    text, data = protocol.encode(message, binary=True)
    assert text is None
    assert msgpack.unpackb(data, raw=False) == message
    assert protocol.encode_bytes(message, binary=True) == data


@pytest.mark.parametrize("binary", [False, True])
def test_numpy_scalars_in_a_reply_are_written_as_numbers(binary):
    message = {"value": np.float32(0.5), "batch_size": np.int64(3), "flag": np.bool_(True)}
    payload = protocol.encode_bytes(message, binary)
    decoded = msgpack.unpackb(payload) if binary else json.loads(payload)
    assert decoded == {"value": 0.5, "batch_size": 3, "flag": True}


@pytest.mark.parametrize("binary", [False, True])
def test_anything_else_in_a_reply_is_a_bug_said_out_loud(binary):
    with pytest.raises(TypeError, match=r"^Cannot encode object in a reply\.$"):
        protocol.encode_bytes({"value": object()}, binary)


def test_a_json_reply_writes_text_as_utf_8_numpy_scalars_or_not():
    payload = protocol.encode_bytes({"label": "été", "value": np.float64(0.25)}, binary=False)
    assert payload == '{"label":"été","value":0.25}'.encode()


def test_text_orjson_will_not_write_is_escaped_in_a_json_reply():
    payload = protocol.encode_bytes({"id": "\ud800", "note": "été"}, binary=False)
    assert payload == b'{"id":"\\ud800","note":"\\u00e9t\\u00e9"}'
    assert json.loads(payload) == {"id": "\ud800", "note": "été"}


def test_an_error_reply_carries_its_code_message_id_and_extra_fields():
    assert protocol.error("overloaded", "The queue is full.", "c-4", retry_after_ms=12) == {
        "type": "error", "id": "c-4",
        "error": {"code": "overloaded", "message": "The queue is full.", "retry_after_ms": 12},
    }
    assert protocol.error("invalid_json", "The frame is empty.") == {
        "type": "error", "id": None, "error": {"code": "invalid_json", "message": "The frame is empty."},
    }


def test_a_protocol_error_keeps_what_its_reply_needs():
    error = ProtocolError("overloaded", "Try later.", "c-5", retry_after_ms=40)
    assert (error.code, error.message, str(error), error.request_id) == ("overloaded", "Try later.", "Try later.",
                                                                          "c-5")
    assert error.extra == {"retry_after_ms": 40}
    assert error.entry is None
