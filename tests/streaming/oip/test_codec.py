"""The tensor codec: the protocol's input tensors to rows, a model's output to output tensors."""

from __future__ import annotations

import numpy as np
import pytest

from inference.schema import InputSchema
from inference.served import ServedVersion
from streaming.oip import codec
from streaming.oip.codec import TensorError

FEATURES = ["a", "b", "c"]


def classifier() -> ServedVersion:
    return ServedVersion("iris", 1, "classification", InputSchema(FEATURES), "probabilities", classes=["x", "y"])


def regressor() -> ServedVersion:
    return ServedVersion("diabetes", 2, "regression", InputSchema(FEATURES), "value")


def tensor(name, shape, data, datatype="FP64"):
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def rows(inputs, features):
    """A JSON request's ``inputs`` as the model's rows."""
    return codec.rows(codec.json_tensors(inputs), features)


@pytest.mark.parametrize("data", [[1, 2, 3, 4, 5, 6], [[1, 2, 3], [4, 5, 6]]])
@pytest.mark.parametrize("datatype", sorted(codec.DATATYPES))
def test_one_matrix_tensor_flat_or_nested_of_every_numeric_type(data, datatype):
    assert rows([tensor("input", [2, 3], data, datatype)], FEATURES) == [[1, 2, 3], [4, 5, 6]]


def test_one_tensor_per_feature_in_any_order_with_shape_n_or_n_by_1():
    inputs = [tensor("c", [2], [3.0, 6.0]), tensor("a", [2, 1], [[1.0], [4.0]]), tensor("b", [2], [2, 5], "INT32")]
    assert rows(inputs, FEATURES) == [[1.0, 2, 3.0], [4.0, 5, 6.0]]


@pytest.mark.parametrize(("inputs", "message"), [
    ([tensor("input", [2, 3], [1, 2, 3, 4, 5, 6], "BYTES")], "datatype 'BYTES' is not supported"),
    ([tensor("input", [2, 3], [1, 2, 3, 4, 5, 6], "BOOL")], "datatype 'BOOL' is not supported"),
    ([tensor("input", [2, 2], [1, 2, 3, 4])], "expected shape [N, 3], got [2, 2]"),
    ([tensor("input", [2, 3], [1, 2, 3, 4, 5])], "shape [2, 3] holds 6 values, data has 5"),
    ([tensor("input", [1, 3], [1, 2.5, 3], "INT64")], "2.5 is not a INT64 value"),
    ([tensor("input", [1, 3], [1, 300, 3], "INT8")], "300 is not a INT8 value"),
    ([tensor("input", [1, 3], [1, -1, 3], "UINT16")], "-1 is not a UINT16 value"),
    ([tensor("input", [1, 3], [1, "2", 3])], "'2' is not a FP64 value"),
    ([tensor("input", [1, 3], [1, True, 3])], "True is not a FP64 value"),
    ([tensor("a", [1], [1]), tensor("b", [1], [2])], "Input 'c' is missing"),
    ([tensor("a", [1], [1]), tensor("b", [2], [2, 2]), tensor("c", [1], [3])], "has 2 rows, the other inputs 1"),
    ([tensor("a", [1, 2], [1, 1]), tensor("b", [1], [2]), tensor("c", [1], [3])], "shape [N] or [N, 1]"),
    ([tensor("a", [1], [1]), tensor("a", [1], [2]), tensor("c", [1], [3])], "given twice"),
    ([tensor("a", [1], [1]), tensor("zz", [1], [2])], "Unknown input 'zz'"),
    ([{"name": "input", "shape": [1, 3], "datatype": "FP64"}], "data must be a list"),
    ([tensor("input", [1, -3], [1, 2, 3])], "shape must be a list of non-negative integers"),
    ([], "non-empty list"),
    ("nope", "non-empty list"),
])
def test_tensors_that_are_not_the_models_rows_are_refused_with_a_reason(inputs, message):
    with pytest.raises(TensorError) as caught:
        rows(inputs, FEATURES)
    assert message in str(caught.value)


def test_classifier_outputs_label_and_probabilities():
    outputs = np.array([[0.2, 0.8], [0.9, 0.1]])
    tensors = codec.output_tensors(classifier(), outputs, codec.output_names(classifier()))
    assert tensors == [
        {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["y", "x"]},
        {"name": "probabilities", "datatype": "FP64", "shape": [2, 2], "data": [0.2, 0.8, 0.9, 0.1]},
    ]


def test_regressor_outputs_value():
    tensors = codec.output_tensors(regressor(), np.array([1.5, 2.5], dtype=np.float32), ("value",))
    assert tensors == [{"name": "value", "datatype": "FP64", "shape": [2], "data": [1.5, 2.5]}]


def requested(body, entry):
    return codec.requested_outputs(codec.json_output_names(body), entry)


def test_the_outputs_filter_is_honoured_and_an_unknown_name_refused():
    assert requested({"outputs": [{"name": "label"}]}, classifier()) == ("label",)
    assert requested({}, classifier()) == ("label", "probabilities")
    with pytest.raises(TensorError, match="Unknown output 'value'"):
        requested({"outputs": [{"name": "value"}]}, classifier())
    with pytest.raises(TensorError, match="Unknown output 'label'"):
        requested({"outputs": [{"name": "label"}]}, regressor())
    with pytest.raises(TensorError, match="must be a list"):
        requested({"outputs": "label"}, classifier())
