"""scikit-learn runtime: one model call per batch, on one contiguous float array."""

from __future__ import annotations

from typing import Any

import numpy as np
import sklearn


class SklearnRuntime:
    device = "cpu"
    # scikit-learn's input checks and small-array NumPy calls run with the GIL held.
    holds_gil = True
    classes: list[str] | None

    def __init__(self, estimator: Any, *, task: str, n_features: int, classes: list[str] | None) -> None:
        self.estimator = estimator
        self.task = task
        self.n_features = n_features
        if task == "classification":
            if not hasattr(estimator, "predict_proba"):
                raise TypeError(f"{type(estimator).__name__} has no predict_proba; it cannot serve a classifier.")
            self._call = estimator.predict_proba
            self.classes = [str(c) for c in (classes or estimator.classes_)]
        else:
            self._call = estimator.predict
            self.classes = None

    def predict(self, batch: np.ndarray) -> np.ndarray:
        # Inputs were checked finite before they were queued; skip sklearn's second pass.
        with sklearn.config_context(assume_finite=True):
            return np.asarray(self._call(batch))

    def warmup(self) -> None:
        self.predict(np.zeros((1, self.n_features)))
