"""Loading one model version into something the pool can serve: its runtime, checked, behind a new batcher.

Loading reads and verifies the artifact, builds the runtime and warms it up:
it may take seconds and never runs on the event loop (the pool runs it in a
loader thread, or before the server starts).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING

import numpy as np

from .batching import BatchStats, DynamicBatcher
from .exceptions import ArtifactError
from .heap import release_free_heap
from .registry import Batching
from .runtimes.base import Runtime
from .schema import InputSchema
from .served import ServedVersion

if TYPE_CHECKING:
    from .models import ModelVersion

#: The executor that runs a device's model calls, by device name.
ExecutorFor = Callable[[str], Executor]


def new_entry(name: str, version: int, task: str, inputs: list[str] | tuple[str, ...], outputs: str,
              error: str | None = None) -> ServedVersion:
    """An entry for one version, not loaded yet (or, with ``error``, one that will not be)."""
    return ServedVersion(name=name, version=version, task=task, schema=InputSchema(list(inputs)), outputs=outputs,
                         error=error)


def attach(entry: ServedVersion, runtime: Runtime, *, executor: Executor, batching: Batching,
           on_batch: Callable[[BatchStats], None] | None) -> None:
    """Serve ``entry`` with ``runtime`` behind a new dynamic batcher; refuse a classifier that does not add up."""
    if entry.task == "classification":
        check_classes(entry, runtime)
    entry.classes = runtime.classes
    entry.device = runtime.device
    entry.engine = runtime.engine
    entry.batcher = DynamicBatcher(
        runtime.predict,
        executor=executor,
        max_batch_size=batching.max_batch_size,
        max_delay_ms=batching.max_delay_ms,
        queue_capacity=batching.queue_capacity,
        name=f"{entry.name} v{entry.version}",
        on_batch=on_batch,
        inline_below_ms=batching.inline_below_ms if runtime.holds_gil else 0.0,
    )


def check_classes(entry: ServedVersion, runtime: Runtime) -> None:
    """Refuse a classifier whose probability columns do not match its class labels."""
    probe = runtime.predict(np.zeros((1, entry.schema.n_features)))
    classes = runtime.classes or []
    if probe.ndim != 2 or probe.shape[1] != len(classes):
        raise ArtifactError(
            f"{entry.name} v{entry.version} is a classifier with {len(classes)} class labels, "
            f"but its model returns {probe.shape[1] if probe.ndim == 2 else 'no'} probability columns."
        )


def load_version(row: ModelVersion, batching: Batching, executor_for: ExecutorFor) -> ServedVersion:
    """Verify, load and warm up one registry version; returns its entry, ready to serve.

    The batcher has no observer yet: whoever swaps the entry in sets
    ``batcher.on_batch`` once the warm-up requests are through, so that they
    are not counted as traffic. Raises ``ArtifactError`` (or whatever the
    framework raised) when the version cannot serve.
    """
    from .artifacts import load_runtime

    mlmodel = row.model
    entry = new_entry(mlmodel.name, row.version, mlmodel.task, mlmodel.inputs, mlmodel.outputs)
    started = time.perf_counter()
    runtime = load_runtime(row, max_batch_size=batching.max_batch_size)
    attach(entry, runtime, executor=executor_for(runtime.device), batching=batching, on_batch=None)
    # What loading allocated and dropped (the artifact's bytes, the ONNX conversion) goes back to the system.
    release_free_heap()
    entry.load_ms = (time.perf_counter() - started) * 1000.0
    return entry
