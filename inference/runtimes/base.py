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

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Called from an executor thread with a C-contiguous float array of shape (rows, features).

        Returns probabilities (rows, classes) for a classifier, values (rows,) or
        (rows, outputs) otherwise; one output row per input row.
        """
        ...

    def warmup(self) -> None:
        """Called once after loading, before the model serves its first request."""
        ...
