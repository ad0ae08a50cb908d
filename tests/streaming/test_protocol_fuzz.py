"""Fuzzing the frame decoder: anything a client sends is a dict body or ``invalid_json``; the connection serves on."""

from __future__ import annotations

import json
import math

import hypothesis
import msgpack
import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from streaming.protocol import ProtocolError, decode

from .helpers import IRIS_ROW, assert_still_serving, connected

# No example database on disk (a failure prints its example), and no deadline: the machine may be busy.
# No deadline and no "too slow" health check: a shared CI machine may be slow; what is
# checked is each example's outcome, never its time.
FUZZ = hypothesis.settings(database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DEEP = hypothesis.settings(FUZZ, max_examples=30)
THROUGH_THE_CONSUMER = hypothesis.settings(
    FUZZ, max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

# -- what clients may send ---------------------------------------------------------------

finite_floats = st.floats(allow_nan=False, allow_infinity=False)
int64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)


def documents(scalars):
    """Arbitrarily nested lists and string-keyed maps of ``scalars``."""
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
        max_leaves=40,
    )


json_documents = documents(st.none() | st.booleans() | st.integers() | finite_floats | st.text(max_size=20))
msgpack_documents = documents(
    st.none() | st.booleans() | int64 | finite_floats | st.text(max_size=20) | st.binary(max_size=20)
)

# Pieces of JSON, right and wrong, glued at random: most results are broken in interesting places.
JSON_TOKENS = [
    "{", "}", "[", "]", ":", ",", " ", "\n", '"', '"id"', '"inputs"', '"model"', '"iris"', "0", "-1", "1.5",
    "1e999", "-1e999", "1e-400", "12345678901234567890123456789", "NaN", "-Infinity", "Infinity", "true",
    "false", "null", "nul", '"\\u00e9"', '"\\ud83d\\ude00"', '"\\ud800"', '"\\x"', "\\", "'", "/*", "\x00",
]
jsonish_text = st.lists(st.sampled_from(JSON_TOKENS), max_size=40).map("".join)

# Where no parser gives up gently: recursion far past any stack, closed or not.
NESTINGS = [("[", "", "]"), ('{"a":', "1", "}"), ('{"inputs":[', "1", "]}")]
deep_json = st.builds(
    lambda depth, nesting, closed: nesting[0] * depth + (nesting[1] + nesting[2] * depth if closed else ""),
    st.integers(min_value=1, max_value=200_000),
    st.sampled_from(NESTINGS),
    st.booleans(),
)
deep_msgpack = st.builds(
    lambda depth, opener, leaf: opener * depth + leaf,
    st.integers(min_value=1, max_value=200_000),
    st.sampled_from([b"\x91", b"\x81\xa1a", b"\xdc\x00\x01", b"\xdf\x00\x00\x00\x01\xa1a"]),
    st.sampled_from([b"\x90", b"\x80", b"\xc0", b""]),
)


def decoded(text=None, data=None):
    """The frame's body, or None where it was refused as ``invalid_json``; any other exception fails the test."""
    try:
        frame = decode(text, data)
    except ProtocolError as exc:
        assert exc.code == "invalid_json", exc.code
        assert exc.message.endswith("."), exc.message
        assert exc.request_id is None
        return None
    assert type(frame.body) is dict
    return frame.body


# -- the decoder alone -----------------------------------------------------------------------


@FUZZ
@given(st.text(st.characters(exclude_categories=()), max_size=300))  # lone surrogates included
def test_any_text_is_a_dict_or_invalid_json(text):
    decoded(text=text)


@FUZZ
@given(jsonish_text)
def test_jsonish_text_is_a_dict_or_invalid_json(text):
    decoded(text=text)


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_are_a_dict_or_invalid_json(data):
    decoded(data=data)


@FUZZ
@given(json_documents, st.booleans(), st.sampled_from([None, 0, 2]))
def test_a_json_document_is_its_own_body_when_it_is_an_object(document, ensure_ascii, indent):
    body = decoded(text=json.dumps(document, ensure_ascii=ensure_ascii, indent=indent))
    if isinstance(document, dict):
        assert body == document
    else:
        assert body is None


@FUZZ
@given(json_documents, st.sampled_from([math.nan, math.inf, -math.inf]))
def test_nan_and_infinity_literals_are_invalid_json(document, not_finite):
    assert decoded(text=json.dumps({"inputs": [document, not_finite]})) is None


@FUZZ
@given(msgpack_documents)
def test_a_messagepack_document_is_its_own_body_when_it_is_a_map(document):
    body = decoded(data=msgpack.packb(document, use_bin_type=True))
    if isinstance(document, dict):
        assert body == document
    else:
        assert body is None


@FUZZ
@given(st.dictionaries(int64 | st.none() | st.booleans() | finite_floats, int64, min_size=1, max_size=4))
def test_messagepack_maps_keyed_by_other_than_strings_are_invalid_json(document):
    assert decoded(data=msgpack.packb({"inputs": [document]})) is None


@FUZZ
@given(msgpack_documents, st.data())
def test_truncated_messagepack_is_a_dict_or_invalid_json(document, data):
    packed = msgpack.packb(document, use_bin_type=True)
    decoded(data=packed[: data.draw(st.integers(min_value=0, max_value=len(packed)))])


@DEEP
@given(deep_json)
@hypothesis.example("[" * 100_000 + "]" * 100_000)
def test_deeply_nested_json_is_a_dict_or_invalid_json(text):
    decoded(text=text)


@DEEP
@given(deep_msgpack)
@hypothesis.example(b"\x91" * 100_000 + b"\x90")
def test_deeply_nested_messagepack_is_a_dict_or_invalid_json(data):
    decoded(data=data)


def test_a_frame_with_neither_text_nor_bytes_is_invalid_json():
    assert decoded() is None


# -- through the consumer -------------------------------------------------------------------

ERROR_CODES = {"invalid_json", "invalid_request", "invalid_input", "unknown_model", "model_unavailable",
               "overloaded", "rate_limited", "timeout", "internal"}

def requests(values, integers):
    """Request-shaped maps whose fields are right, wrong or strange: ``values`` and ``integers`` fill them."""
    values = values | st.sampled_from(["iris", "diabetes", "predict", "ping", "models", "auth", 1])
    rows = st.lists(
        st.lists(integers | finite_floats | st.sampled_from([True, None, "1", 1e308]), min_size=3, max_size=5)
        | st.dictionaries(st.sampled_from(["sepal_length", "sepal_width", "petal_length", "petal_width", "stem"]),
                          finite_floats, max_size=5)
        | st.just(IRIS_ROW),
        max_size=4,
    )
    return st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["predict", "ping", "models", "auth"]) | values,
            "id": integers | st.text(max_size=140) | values,
            "model": st.sampled_from(["iris", "diabetes", "digits", "nope"]) | values,
            "version": st.integers(min_value=-1, max_value=3) | values,
            "inputs": rows | values,
            "token": st.text(max_size=10),
        },
    )


frames = st.one_of(
    st.text(max_size=200).map(lambda text: {"text": text}),
    jsonish_text.map(lambda text: {"text": text}),
    st.binary(max_size=200).map(lambda data: {"bytes": data}),
    requests(json_documents, st.integers()).map(lambda request: {"text": json.dumps(request)}),
    requests(msgpack_documents, int64).map(lambda request: {"bytes": msgpack.packb(request, use_bin_type=True)}),
    deep_json.map(lambda text: {"text": text}),
    deep_msgpack.map(lambda data: {"bytes": data}),
)


def reply_to(message, binary):
    """A reply as the client reads it: JSON text for a text frame, MessagePack for a binary one."""
    assert message["type"] == "websocket.send", message
    if binary:
        assert message.get("bytes") is not None, message
        return msgpack.unpackb(message["bytes"])
    assert message.get("text") is not None, message
    return json.loads(message["text"])


async def assert_answered_and_serving(frame):
    async with connected("/ws/v1/predict/iris/") as ws:
        # As a server hands a frame over, empty ones included (send_to refuses those).
        await ws.send_input({"type": "websocket.receive", **frame})
        reply = reply_to(await ws.receive_output(timeout=10), binary="bytes" in frame)
        assert reply["type"] in {"error", "prediction", "pong", "models"}, reply
        if reply["type"] == "error":
            assert reply["error"]["code"] in ERROR_CODES, reply
            assert reply["error"]["message"], reply
        assert await ws.receive_nothing(timeout=0.05), "one frame, one reply"
        await assert_still_serving(ws)
    return reply


@THROUGH_THE_CONSUMER
@given(frame=frames)
async def test_every_frame_is_answered_and_the_connection_serves_on(service, settings, frame):
    settings.PLATFORM_REQUIRE_API_KEY = False
    await assert_answered_and_serving(frame)


# JSON's \ud800 escapes parse to lone surrogates, which neither JSON nor MessagePack can send back.
@pytest.mark.parametrize("frame", [
    {"text": '{"type": "ping", "id": "\\ud800"}'},
    {"text": '{"id": "\\udfff", "inputs": [[5.1, 3.5, 1.4, 0.2]]}'},
])
async def test_an_id_no_reply_can_carry_is_invalid_request(service, settings, frame):
    settings.PLATFORM_REQUIRE_API_KEY = False
    reply = await assert_answered_and_serving(frame)
    assert reply["type"] == "error" and reply["error"]["code"] == "invalid_request", reply
    assert reply["id"] is None
