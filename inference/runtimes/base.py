"""What every runtime offers the batching pool."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Runtime(Protocol):
    """A loaded model that computes one batch at a time, off the event loop."""

    #: "cpu" or the accelerator it runs on, e.g. "gpu:0"; one executor worker per device.
    device: str
    task: str
    n_features: int
    classes: list[str] | None
    #: Whether a call holds the GIL for most of its time (pure-Python glue, small NumPy work): then
    #: the pool may run short calls on the event loop (``inference.inline_calls``); a framework
    #: that computes with the GIL released (TensorFlow) keeps every call in the model's thread.
    holds_gil: bool
    #: What computes the batches, for the operators: "onnxruntime", "scikit-learn", "tensorflow".
    engine: str

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Called with a C-contiguous float array of shape (rows, features), in the model's thread or inline.

        Returns probabilities (rows, classes) for a classifier, values (rows,) or
        (rows, outputs) otherwise; one output row per input row.
        """
        ...

    def warmup(self) -> None:
        """Called once after loading, before the model serves its first request."""
        ...
