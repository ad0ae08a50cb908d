"""Example rows that prefill the try-it panel's form."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence

logger = logging.getLogger(__name__)

# The demo models (inference.demo) were trained on these data sets bundled
# with scikit-learn; their first row makes a realistic example.
DEMO_DATA_SETS = {
    "iris": "load_iris",
    "breast-cancer": "load_breast_cancer",
    "diabetes": "load_diabetes",
    "digits": "load_digits",
}


@functools.cache
def _first_row(loader: str) -> tuple[float, ...]:
    from sklearn import datasets

    return tuple(round(float(value), 4) for value in getattr(datasets, loader)().data[0])


def example_row(name: str, n_features: int) -> list[float]:
    """The first row of a demo model's data set when the schema fits, else zeros."""
    loader = DEMO_DATA_SETS.get(name)
    if loader is not None:
        try:
            row = _first_row(loader)
        except Exception as exc:  # an example is a convenience, never a reason to fail the page
            logger.warning("Could not read an example row for %s: %s", name, exc)
        else:
            if len(row) == n_features:
                return list(row)
    return [0.0] * n_features


def example_rows(models: Mapping[str, Sequence[str]]) -> dict[str, list[float]]:
    """An example row for each model, given its input feature names."""
    return {name: example_row(name, len(inputs)) for name, inputs in models.items() if isinstance(inputs, list)}
