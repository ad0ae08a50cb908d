"""The protocol's tensors to a model's rows, and a model's output to the protocol's output tensors.

Requests carry either one ``[N, F]`` tensor holding every feature, or one
``[N]`` (or ``[N, 1]``) tensor per named feature. ``data`` is flat in
row-major order or nested as the shape says. Only the numeric datatypes are
accepted; the values are checked against their datatype here, and for
finiteness by the model's schema, as every other request is.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from inference.served import ServedVersion

#: The numeric datatypes a request may use, with the range an integer type holds.
INTEGER_RANGES: dict[str, tuple[int, int]] = {
    **{f"INT{bits}": (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) for bits in (8, 16, 32, 64)},
    **{f"UINT{bits}": (0, 2**bits - 1) for bits in (8, 16, 32, 64)},
}
FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})
DATATYPES = FLOAT_TYPES | frozenset(INTEGER_RANGES)

CLASSIFIER_OUTPUTS = ("label", "probabilities")
REGRESSOR_OUTPUTS = ("value",)


class TensorError(ValueError):
    """A request's tensors cannot be read as the model's rows; the message says why."""


class Tensor(NamedTuple):
    """An input tensor as either protocol carries it: its name, shape and values, flat in row-major order."""

    name: str
    shape: list[int]
    values: list[Any]


def output_names(entry: ServedVersion) -> tuple[str, ...]:
    """The outputs ``entry`` answers with, by the protocol's names."""
    if entry.task == "classification" and entry.classes is not None:
        return CLASSIFIER_OUTPUTS
    return REGRESSOR_OUTPUTS


def _flatten(data: Any, out: list[Any]) -> None:
    for value in data:
        if type(value) is list:
            _flatten(value, out)
        else:
            out.append(value)


def json_tensor(tensor: Any) -> Tensor:
    """A JSON input tensor's name, shape and flat values, checked against its datatype."""
    if type(tensor) is not dict:
        raise TensorError("Each input must be an object with name, shape, datatype and data.")
    name = tensor.get("name")
    if type(name) is not str:
        raise TensorError("Each input needs a name.")
    shape = tensor.get("shape")
    if type(shape) is not list or not shape or not all(type(d) is int and d >= 0 for d in shape):
        raise TensorError(f"Input {name!r}: shape must be a list of non-negative integers.")
    datatype = tensor.get("datatype")
    if datatype not in DATATYPES:
        raise TensorError(f"Input {name!r}: datatype {datatype!r} is not supported; use one of "
                          f"{', '.join(sorted(DATATYPES))}.")
    data = tensor.get("data")
    if type(data) is not list:
        raise TensorError(f"Input {name!r}: data must be a list, or the input's values binary (binary_data_size).")
    flat: list[Any] = []
    _flatten(data, flat)
    if len(flat) != math.prod(shape):
        raise TensorError(f"Input {name!r}: shape {shape} holds {math.prod(shape)} values, data has {len(flat)}.")
    bounds = INTEGER_RANGES.get(datatype)
    for value in flat:
        kind = type(value)
        if bounds is not None:
            if kind is not int or not bounds[0] <= value <= bounds[1]:
                raise TensorError(f"Input {name!r}: {value!r} is not a {datatype} value.")
        elif kind is not float and kind is not int:
            raise TensorError(f"Input {name!r}: {value!r} is not a {datatype} value.")
    return Tensor(name, shape, flat)


def json_tensors(inputs: Any) -> list[Tensor]:
    """The ``inputs`` of a JSON request; raises ``TensorError``."""
    if type(inputs) is not list or not inputs:
        raise TensorError("inputs must be a non-empty list of tensors.")
    return [json_tensor(tensor) for tensor in inputs]


def rows(tensors: list[Tensor], features: list[str]) -> list[list[Any]]:
    """The request's rows in the model's feature order, for its schema to check; raises ``TensorError``."""
    if not tensors:
        raise TensorError("inputs must be a non-empty list of tensors.")
    n_features = len(features)
    if len(tensors) == 1 and tensors[0][0] not in features:
        name, shape, flat = tensors[0]
        if len(shape) != 2 or shape[1] != n_features:
            raise TensorError(f"Input {name!r}: expected shape [N, {n_features}], got {shape}.")
        return [flat[i:i + n_features] for i in range(0, len(flat), n_features)]
    columns: dict[str, list[Any]] = {}
    n_rows: int | None = None
    for name, shape, flat in tensors:
        if name not in features:
            raise TensorError(f"Unknown input {name!r}: send one [N, {n_features}] tensor or one tensor per "
                              f"feature ({', '.join(features)}).")
        if name in columns:
            raise TensorError(f"Input {name!r} is given twice.")
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise TensorError(f"Input {name!r}: a feature's tensor has shape [N] or [N, 1], got {shape}.")
        if n_rows is not None and shape[0] != n_rows:
            raise TensorError(f"Input {name!r} has {shape[0]} rows, the other inputs {n_rows}.")
        n_rows = shape[0]
        columns[name] = flat
    missing = [name for name in features if name not in columns]
    if missing:
        raise TensorError(f"Input {missing[0]!r} is missing.")
    return [list(row) for row in zip(*(columns[name] for name in features), strict=True)]


def json_output_names(body: dict[str, Any]) -> list[Any] | None:
    """The output names a JSON request asks for; None when it names none."""
    outputs = body.get("outputs")
    if outputs is None:
        return None
    if type(outputs) is not list:
        raise TensorError("outputs must be a list of objects with a name.")
    return [output.get("name") if type(output) is dict else None for output in outputs]


def requested_outputs(asked: list[Any] | None, entry: ServedVersion) -> tuple[str, ...]:
    """The output names a request asks for (all when it names none); raises ``TensorError`` for an unknown one."""
    available = output_names(entry)
    if not asked:
        return available
    names: list[str] = []
    for name in asked:
        if name not in available:
            raise TensorError(f"Unknown output {name!r}: {entry.name} answers with {', '.join(available)}.")
        names.append(name)
    return tuple(names)


def output_tensors(entry: ServedVersion, outputs: np.ndarray, names: tuple[str, ...]) -> list[dict[str, Any]]:
    """The response's output tensors for a request's slice of the model's output."""
    n = outputs.shape[0]
    tensors: list[dict[str, Any]] = []
    for name in names:
        if name == "label" and entry.classes is not None:
            classes = entry.classes
            labels = [classes[winner] for winner in outputs.argmax(axis=1).tolist()]
            tensors.append({"name": "label", "datatype": "BYTES", "shape": [n], "data": labels})
        elif name == "probabilities":
            tensors.append({"name": "probabilities", "datatype": "FP64", "shape": list(outputs.shape),
                            "data": outputs.astype(np.float64).ravel().tolist()})
        else:
            tensors.append({"name": "value", "datatype": "FP64", "shape": list(outputs.shape),
                            "data": outputs.astype(np.float64).ravel().tolist()})
    return tensors
