"""Checking request rows against a model's input schema."""

from __future__ import annotations

import numpy as np
import pytest

from inference.exceptions import InvalidInput
from inference.schema import InputSchema

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture
def schema() -> InputSchema:
    return InputSchema(FEATURES)


def test_lists_of_numbers_become_one_float64_array(schema):
    array = schema.to_array([[5.1, 3.5, 1.4, 0.2], [6, 3, 5, 2]], max_rows=10)

    assert array.dtype == np.float64
    assert array.shape == (2, 4)
    assert array.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(array, [[5.1, 3.5, 1.4, 0.2], [6.0, 3.0, 5.0, 2.0]])


def test_named_features_are_put_in_schema_order(schema):
    rows = [
        {"petal_width": 0.2, "sepal_length": 5.1, "petal_length": 1.4, "sepal_width": 3.5},
        [6, 3, 5, 2],
        {"sepal_width": 2.9, "petal_width": 1.3, "sepal_length": 5.7, "petal_length": 4.2},
    ]
    array = schema.to_array(rows, max_rows=10)

    assert array.dtype == np.float64
    assert array.shape == (3, 4)
    assert array.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(array, [[5.1, 3.5, 1.4, 0.2], [6, 3, 5, 2], [5.7, 2.9, 4.2, 1.3]])


def test_the_callers_rows_are_left_as_they_were(schema):
    named = {"petal_width": 0.2, "sepal_length": 5.1, "petal_length": 1.4, "sepal_width": 3.5}
    rows = [named]
    schema.to_array(rows, max_rows=10)

    assert rows == [named]
    assert rows[0] is named


def test_large_integers_that_fit_a_float_are_accepted(schema):
    array = schema.to_array([[2**70, -(2**70), 0, 1]], max_rows=1)

    np.testing.assert_array_equal(array, [[2.0**70, -(2.0**70), 0.0, 1.0]])


def test_exactly_max_rows_is_accepted(schema):
    array = schema.to_array([[1, 2, 3, 4]] * 3, max_rows=3)

    assert array.shape == (3, 4)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ({"sepal_length": 1}, "inputs must be a list of rows."),
        ("1,2,3,4", "inputs must be a list of rows."),
        (None, "inputs must be a list of rows."),
        ((1, 2, 3, 4), "inputs must be a list of rows."),
        ([], "inputs must hold at least one row."),
        ([[1, 2, 3, 4]] * 4, "inputs has 4 rows; at most 3 are allowed in one request."),
        ([[1, 2, 3, 4], [1, 2, 3]], "row 1: expected 4 features, got 3."),
        ([[1, 2, 3, 4], [1, 2, 3, 4, 5]], "row 1: expected 4 features, got 5."),
        ([[1, 2, 3, 4], []], "row 1: expected 4 features, got 0."),
        ([[1, 2, 3, 4], 7], "row 1: expected a list of 4 numbers or an object of named features."),
        ([[1, 2, 3, 4], "1,2,3,4"], "row 1: expected a list of 4 numbers or an object of named features."),
        ([[1, 2, 3, 4], None], "row 1: expected a list of 4 numbers or an object of named features."),
        ([[1, 2, 3, 4], [1, 2, "3", 4]], "row 1: feature 'petal_length' is a string, not a finite number."),
        ([[1, 2, 3, 4], [1, True, 3, 4]], "row 1: feature 'sepal_width' is a boolean, not a finite number."),
        ([[1, 2, 3, 4], [1, 2, 3, False]], "row 1: feature 'petal_width' is a boolean, not a finite number."),
        ([[1, 2, 3, 4], [None, 2, 3, 4]], "row 1: feature 'sepal_length' is null, not a finite number."),
        ([[1, 2, 3, 4], [1, 2, [3], 4]], "row 1: feature 'petal_length' is a list, not a finite number."),
        ([[1, 2, 3, 4], [1, 2, {"x": 3}, 4]], "row 1: feature 'petal_length' is a dict, not a finite number."),
        ([[1, 2, 3, 4], [1, 2, float("nan"), 4]], "row 1: feature 'petal_length' is not a finite number."),
        ([[1, 2, 3, 4], [1, float("inf"), 3, 4]], "row 1: feature 'sepal_width' is not a finite number."),
        ([[1, 2, 3, 4], [1, 2, 3, float("-inf")]], "row 1: feature 'petal_width' is not a finite number."),
        ([[1, 2, 3, 4], [1, 2, 3, 10**400]], "row 1: feature 'petal_width' is not a finite number."),
        ([[1, 2, 3, 4], [-(10**400), 2, 3, 4]], "row 1: feature 'sepal_length' is not a finite number."),
        ([[1, 2, 3, 4], [1, 2, 3, 1e308 * 10]], "row 1: feature 'petal_width' is not a finite number."),
    ],
    ids=[
        "object-not-list",
        "string-not-list",
        "null-not-list",
        "tuple-not-list",
        "empty",
        "too-many-rows",
        "too-few-features",
        "too-many-features",
        "empty-row",
        "row-is-number",
        "row-is-string",
        "row-is-null",
        "string",
        "true",
        "false",
        "null",
        "nested-list",
        "nested-object",
        "nan",
        "infinity",
        "minus-infinity",
        "huge-int",
        "huge-negative-int",
        "overflowed-float",
    ],
)
def test_bad_rows_are_refused_with_a_message_naming_the_fault(schema, rows, message):
    with pytest.raises(InvalidInput) as excinfo:
        schema.to_array(rows, max_rows=3)

    assert str(excinfo.value) == message
    assert excinfo.value.code == "invalid_input"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {"sepal_length": 1, "sepal_width": 2, "petal_length": 3, "petal_width": 4, "colour": 1},
            "row 1: unknown feature 'colour'.",
        ),
        ({"sepal_length": 1, "sepal_width": 2, "petal_width": 4}, "row 1: missing feature 'petal_length'."),
        ({}, "row 1: missing feature 'sepal_length'."),
        (
            {"sepal_length": 1, "sepal_width": 2, "petal_length": 3, "petal_wdth": 4},
            "row 1: unknown feature 'petal_wdth'.",
        ),
        (
            {"petal_width": "4", "sepal_length": 1, "sepal_width": 2, "petal_length": 3},
            "row 1: feature 'petal_width' is a string, not a finite number.",
        ),
        (
            {"petal_width": 4, "sepal_length": 1, "sepal_width": float("nan"), "petal_length": 3},
            "row 1: feature 'sepal_width' is not a finite number.",
        ),
    ],
    ids=["unknown", "missing", "empty", "misspelt", "string-value", "nan-value"],
)
def test_bad_named_features_are_refused_with_the_feature_named(schema, row, message):
    with pytest.raises(InvalidInput) as excinfo:
        schema.to_array([[1, 2, 3, 4], row], max_rows=3)

    assert str(excinfo.value) == message


def test_the_first_bad_row_is_the_one_reported(schema):
    with pytest.raises(InvalidInput) as excinfo:
        schema.to_array([[1, 2, 3, 4], [1, 2, 3, 4], [1, None, 3, 4], [1, 2, 3]], max_rows=10)

    assert str(excinfo.value) == "row 2: feature 'sepal_width' is null, not a finite number."


def test_the_first_non_finite_value_is_the_one_reported(schema):
    with pytest.raises(InvalidInput) as excinfo:
        schema.to_array([[1, 2, 3, 4], [1, 2, 3, 10**400], [float("nan"), 2, 3, 4]], max_rows=10)

    assert str(excinfo.value) == "row 1: feature 'petal_width' is not a finite number."


def test_finite_values_whose_sum_overflows_are_accepted(schema):
    array = schema.to_array([[1e308, 1e308, 1e308, -1e308]], max_rows=10)
    assert array.tolist() == [[1e308, 1e308, 1e308, -1e308]]
