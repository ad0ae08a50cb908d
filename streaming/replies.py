"""The protocol's replies to predict frames: output rows from a model's raw output, and the messages around them."""

from __future__ import annotations

from typing import Any

import numpy as np

from inference.batching import BatchResult
from inference.exceptions import ModelCallFailed
from inference.served import ServedVersion


def output_rows(version: ServedVersion, outputs: np.ndarray, *, known_finite: bool = False) -> list[dict[str, Any]]:
    """Turn a request's slice of the model's output into the protocol's output rows.

    ``known_finite``: the caller already checked that every value is a finite number.
    """
    if not known_finite and outputs.dtype.kind == "f" and not np.isfinite(outputs).all():
        raise ModelCallFailed(f"The model {version.name} produced a value that is not a finite number.")
    if version.task == "classification" and version.classes is not None and outputs.ndim == 2:
        classes = version.classes
        winners = outputs.argmax(axis=1).tolist()
        return [
            {"label": classes[winner], "probabilities": dict(zip(classes, row, strict=False))}
            for winner, row in zip(winners, outputs.tolist(), strict=False)
        ]
    return [{"value": value} for value in outputs.tolist()]


def prediction(rid: Any, version: ServedVersion, outputs: list[dict[str, Any]], result: BatchResult,
               total_ms: float) -> dict[str, Any]:
    """The ``prediction`` message answering request ``rid``."""
    return {
        "type": "prediction",
        "id": rid,
        "model": version.name,
        "version": version.version,
        "outputs": outputs,
        "batch_size": result.batch_size,
        "timing": {
            "queue_ms": round(result.queue_ms, 3),
            "inference_ms": round(result.inference_ms, 3),
            "total_ms": round(total_ms, 3),
        },
    }
