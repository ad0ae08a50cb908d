"""scikit-learn runtime: one model call per batch, on one contiguous float array.

By default the estimator is compiled to ONNX and served by ONNX Runtime
(:mod:`.onnx_compiled`) when the compiled graph answers what scikit-learn
answers; otherwise scikit-learn serves it. ``engine`` says which.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import sklearn

from .onnx_compiled import compile_estimator

logger = logging.getLogger(__name__)

ENGINE_ONNX = "onnxruntime"
ENGINE_SKLEARN = "scikit-learn"


class SklearnRuntime:
    device = "cpu"
    # scikit-learn's input checks and small-array NumPy calls run with the GIL held; ONNX Runtime releases
    # it, but its calls on small batches are a few microseconds, shorter than the hop to the model's thread.
    holds_gil = True
    classes: list[str] | None

    def __init__(self, estimator: Any, *, task: str, n_features: int, classes: list[str] | None,
                 compile_onnx: bool = True, probe: np.ndarray | None = None, name: str = "") -> None:
        self.estimator = estimator
        self.task = task
        self.n_features = n_features
        if task == "classification":
            if not hasattr(estimator, "predict_proba"):
                raise TypeError(f"{type(estimator).__name__} has no predict_proba; it cannot serve a classifier.")
            self._sklearn_call = estimator.predict_proba
            self.classes = [str(c) for c in (classes or estimator.classes_)]
        else:
            self._sklearn_call = estimator.predict
            self.classes = None
        self.engine = ENGINE_SKLEARN
        self.engine_reason = "compilation to ONNX is turned off (PLATFORM_SKLEARN_ONNX=0)"
        self._compiled = None
        if compile_onnx:
            compiled = compile_estimator(estimator, self._sklearn_call, task=task, n_features=n_features,
                                         probe=probe)
            self._compiled, self.engine_reason = compiled.call, compiled.reason
            if compiled.call is not None:
                self.engine = ENGINE_ONNX
        logger.info("%s is served by %s: %s.", name or type(estimator).__name__, self.engine, self.engine_reason)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if self._compiled is not None:
            return self._compiled(batch)
        # Inputs were checked finite before they were queued; skip sklearn's second pass.
        with sklearn.config_context(assume_finite=True):
            return np.asarray(self._sklearn_call(batch))

    def warmup(self) -> None:
        self.predict(np.zeros((1, self.n_features)))
