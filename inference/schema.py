"""Checking a request's rows against a model's input schema, before anything is queued."""

from __future__ import annotations

import math
from typing import Any, NoReturn

import numpy as np

from .exceptions import InvalidInput

_NUMBER_TYPES = frozenset({int, float})


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, float):
        return "not finite" if not math.isfinite(value) else "a number"
    return f"a {type(value).__name__}"


#: Up to this many values, finiteness is checked with a Python sum of the rows.
SMALL_SUM_VALUES = 128


class InputSchema:
    """Feature names in the order a model expects them."""

    __slots__ = ("features", "index", "n_features")

    def __init__(self, features: list[str]) -> None:
        self.features = list(features)
        self.index = {name: position for position, name in enumerate(self.features)}
        self.n_features = len(self.features)

    def to_array(self, rows: Any, *, max_rows: int) -> np.ndarray:
        """Return the rows as one C-contiguous float64 array, or raise ``InvalidInput`` naming the first fault."""
        if type(rows) is not list:
            raise InvalidInput("inputs must be a list of rows.")
        if not rows:
            raise InvalidInput("inputs must hold at least one row.")
        if len(rows) > max_rows:
            raise InvalidInput(f"inputs has {len(rows)} rows; at most {max_rows} are allowed in one request.")
        n = self.n_features
        ordered: list[Any] = rows
        for i, row in enumerate(rows):
            if type(row) is dict:
                if ordered is rows:
                    ordered = list(rows)
                ordered[i] = row = self._from_mapping(i, row)
            elif type(row) is not list:
                raise InvalidInput(f"row {i}: expected a list of {n} numbers or an object of named features.")
            if len(row) != n:
                raise InvalidInput(f"row {i}: expected {n} features, got {len(row)}.")
            # One C-level pass over the row's types; bools and strings are not numbers.
            if not set(map(type, row)) <= _NUMBER_TYPES:
                for j, value in enumerate(row):
                    if type(value) not in _NUMBER_TYPES:
                        raise InvalidInput(
                            f"row {i}: feature {self.features[j]!r} is {_describe(value)}, not a finite number."
                        )
        try:
            array = np.array(ordered, dtype=np.float64)
        except OverflowError:
            self._raise_first_non_finite(ordered)
        # A NaN or an infinity makes the sum non-finite; a finite sum proves
        # every value finite. A sum that overflows gets the exact check.
        # Small requests are summed from the lists: for up to SMALL_SUM_VALUES
        # values a Python sum costs less than numpy's reduction.
        total = sum(map(sum, ordered)) if array.size <= SMALL_SUM_VALUES else array.sum()
        if not math.isfinite(total) and not np.isfinite(array).all():
            self._raise_first_non_finite(ordered)
        return array

    def _from_mapping(self, i: int, row: dict[str, Any]) -> list[Any]:
        unknown = [name for name in row if name not in self.index]
        if unknown:
            raise InvalidInput(f"row {i}: unknown feature {unknown[0]!r}.")
        if len(row) != self.n_features:
            missing = [name for name in self.features if name not in row]
            raise InvalidInput(f"row {i}: missing feature {missing[0]!r}.")
        return [row[name] for name in self.features]

    def _raise_first_non_finite(self, rows: list[list[Any]]) -> NoReturn:
        for i, row in enumerate(rows):
            for j, value in enumerate(row):
                try:
                    finite = math.isfinite(float(value))
                except OverflowError:
                    finite = False
                if not finite:
                    raise InvalidInput(f"row {i}: feature {self.features[j]!r} is not a finite number.")
        raise InvalidInput("inputs hold a value that is not a finite number.")
