"""Binary tensor data: raw values into a JSON request's inputs, outputs out of the response's JSON."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from streaming.oip import binary
from streaming.oip.codec import TensorError


def test_inputs_sent_as_binary_are_read_in_order_and_the_others_left_alone():
    inputs = [{"name": "a", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}},
              {"name": "b", "datatype": "INT64", "shape": [2], "data": [1, 2]},
              {"name": "c", "datatype": "FP16", "shape": [1], "parameters": {"binary_data_size": 2}}]
    raw = np.array([1.5, -2.0], dtype="<f4").tobytes() + np.array([0.25], dtype="<f2").tobytes()
    binary.read_binary_inputs(inputs, raw)
    assert [tensor["data"] for tensor in inputs] == [[1.5, -2.0], [1, 2], [0.25]]


@pytest.mark.parametrize(("inputs", "raw", "message"), [
    ([{"name": "a", "datatype": "FP64", "parameters": {"binary_data_size": 16}}], b"\0" * 8, "does not fit"),
    ([{"name": "a", "datatype": "FP64", "parameters": {"binary_data_size": 8}}], b"\0" * 12, "belong to no input"),
    ([{"name": "a", "datatype": "FP64", "parameters": {"binary_data_size": 6}}], b"\0" * 6, "not a whole number"),
    ([{"name": "a", "datatype": "BYTES", "parameters": {"binary_data_size": 4}}], b"\0" * 4, "'BYTES' is not"),
    ([{"name": "a", "datatype": "FP64", "data": [1.0], "parameters": {"binary_data_size": 8}}], b"\0" * 8,
     "both data and binary_data_size"),
    ([{"name": "a", "datatype": "FP64", "parameters": {"binary_data_size": "8"}}], b"\0" * 8, "does not fit"),
])
def test_binary_inputs_that_do_not_add_up_are_refused(inputs, raw, message):
    with pytest.raises(TensorError, match=message):
        binary.read_binary_inputs(inputs, raw)


def test_the_header_length_is_a_number_within_the_body():
    assert binary.header_length([(b"inference-header-content-length", b"10")], 12) == 10
    assert binary.header_length([(b"content-type", b"application/json")], 12) is None
    for bad in (b"13", b"-1", b"x"):
        with pytest.raises(TensorError, match="Inference-Header-Content-Length"):
            binary.header_length([(b"inference-header-content-length", bad)], 12)


def test_outputs_asked_as_binary_leave_the_json_with_their_size():
    body = {"parameters": {"binary_data_output": True}, "outputs": [
        {"name": "label", "parameters": {"binary_data": False}}, {"name": "probabilities"}]}
    names = binary.binary_outputs(body, ("label", "probabilities"))
    assert names == {"probabilities"}
    tensors = [{"name": "label", "datatype": "BYTES", "shape": [1], "data": ["setosa"]},
               {"name": "probabilities", "datatype": "FP64", "shape": [1, 2], "data": [0.25, 0.75]}]
    chunks = binary.move_to_binary(tensors, names)
    assert chunks == [np.array([0.25, 0.75], dtype="<f8").tobytes()]
    assert tensors[1] == {"name": "probabilities", "datatype": "FP64", "shape": [1, 2],
                          "parameters": {"binary_data_size": 16}}
    assert tensors[0]["data"] == ["setosa"]
    assert binary.bytes_tensor(["ab", "c"]) == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c"
    assert binary.binary_outputs({}, ("label",)) == frozenset()
