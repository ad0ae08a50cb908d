"""How two versions' outputs for the same rows differ: label agreement, absolute differences, disagreements.

For a classifier each row's output is its class probabilities: the rows agree
when both versions pick the same label, and a row's difference is the
largest absolute difference between the two versions' probabilities of the
same class (a class one version lacks counts as probability 0 there). For
any other task a row's difference is the largest absolute difference between
its values, and the rows agree when it is at most ``tolerance``. A value that
is not finite in either version makes its row disagree and adds nothing to
the differences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The most disagreeing rows one comparison contributes to the stored sample.
MAX_DISAGREEMENTS_PER_COMPARISON = 5
#: Two values of a regression agree when they differ by at most this.
DEFAULT_TOLERANCE = 1e-6


@dataclass(frozen=True, slots=True)
class Disagreement:
    """One row on which the versions disagree: its inputs and both outputs, as JSON-ready values."""

    inputs: list[float | None]
    primary: Any
    shadow: Any
    abs_diff: float


@dataclass(frozen=True, slots=True)
class Comparison:
    """How a request's rows compare between the version that answered and the shadow."""

    rows: int
    #: Rows that agree (same label for a classifier, values within the tolerance otherwise).
    agreed: int
    #: The sum and maximum, over rows, of each row's largest absolute difference.
    sum_abs_diff: float
    max_abs_diff: float
    disagreements: tuple[Disagreement, ...] = ()


def _aligned(shadow: np.ndarray, shadow_classes: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """The shadow's probabilities in the column order of ``classes``; 0 for a class it does not know."""
    if list(shadow_classes) == list(classes):
        return shadow
    index = {label: column for column, label in enumerate(shadow_classes)}
    aligned = np.zeros((shadow.shape[0], len(classes)))
    for column, label in enumerate(classes):
        if label in index:
            aligned[:, column] = shadow[:, index[label]]
    return aligned


def _values(values: np.ndarray) -> list[float | None]:
    """JSON-ready values: a value that is not finite becomes null (JSON has no NaN)."""
    return [float(value) if math.isfinite(value) else None for value in values.tolist()]


def _classifier_output(probabilities: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    best = int(np.argmax(np.nan_to_num(probabilities)))
    values = _values(probabilities)
    return {"label": str(classes[best]) if len(classes) > best else None,
            "probabilities": {str(label): p for label, p in zip(classes, values, strict=False)}}


def compare(task: str, rows: np.ndarray, primary: np.ndarray, shadow: np.ndarray, *,
            primary_classes: Sequence[str] | None = None, shadow_classes: Sequence[str] | None = None,
            tolerance: float = DEFAULT_TOLERANCE) -> Comparison:
    """Compare ``primary`` and ``shadow``, the two versions' outputs for ``rows``."""
    n = rows.shape[0]
    left = np.asarray(primary, dtype=np.float64).reshape(n, -1)
    right = np.asarray(shadow, dtype=np.float64).reshape(n, -1)
    classifier = task == "classification" and primary_classes is not None and shadow_classes is not None
    if classifier:
        right = _aligned(right, shadow_classes or [], primary_classes or [])
    width = min(left.shape[1], right.shape[1])
    delta = np.abs(left[:, :width] - right[:, :width])
    finite = np.isfinite(delta).all(axis=1) if width else np.ones(n, dtype=bool)
    diff = np.where(finite, delta.max(axis=1) if width else 0.0, 0.0)
    if classifier:
        labels_left = np.asarray(primary_classes)[np.argmax(np.nan_to_num(left), axis=1)]
        labels_right = np.asarray(shadow_classes)[np.argmax(np.nan_to_num(np.asarray(shadow).reshape(n, -1)), axis=1)]
        agree = (labels_left == labels_right) & finite
    else:
        agree = finite & (diff <= tolerance) & (left.shape[1] == right.shape[1])
    disagreements = []
    pair: tuple[Any, Any]
    for row in np.flatnonzero(~agree)[:MAX_DISAGREEMENTS_PER_COMPARISON]:
        if classifier:
            pair = (_classifier_output(left[row], primary_classes or []),
                    _classifier_output(np.asarray(shadow, dtype=np.float64).reshape(n, -1)[row], shadow_classes or []))
        else:
            pair = (_values(left[row]), _values(right[row]))
        disagreements.append(Disagreement(_values(rows[row]), pair[0], pair[1], float(diff[row])))
    return Comparison(rows=n, agreed=int(agree.sum()), sum_abs_diff=float(diff.sum()),
                      max_abs_diff=float(diff.max()) if n else 0.0, disagreements=tuple(disagreements))
