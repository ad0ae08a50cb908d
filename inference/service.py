"""The in-process inference pool: every loaded model version behind its own dynamic batcher."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings

from monitoring import events

from .batching import BatchResult, BatchStats, DynamicBatcher
from .exceptions import ArtifactError, InferenceError, ModelCallFailed, ModelUnavailable, UnknownModel
from .runtimes.base import Runtime
from .schema import InputSchema

logger = logging.getLogger(__name__)


@dataclass
class ModelEntry:
    """One model version as this process serves it (or failed to)."""

    name: str
    version: int
    task: str
    schema: InputSchema
    outputs: str
    classes: list[str] | None = None
    batcher: DynamicBatcher | None = None
    device: str = "cpu"
    error: str | None = None
    load_ms: float = 0.0

    @property
    def ready(self) -> bool:
        return self.batcher is not None

    def format_outputs(self, outputs: np.ndarray, *, known_finite: bool = False) -> list[dict[str, Any]]:
        """Turn a request's slice of the model's output into the protocol's output rows.

        ``known_finite``: the caller already checked that every value is a finite number.
        """
        if not known_finite and outputs.dtype.kind == "f" and not np.isfinite(outputs).all():
            raise ModelCallFailed(f"The model {self.name} produced a value that is not a finite number.")
        if self.task == "classification" and self.classes is not None and outputs.ndim == 2:
            classes = self.classes
            winners = outputs.argmax(axis=1).tolist()
            return [
                {"label": classes[winner], "probabilities": dict(zip(classes, row, strict=False))}
                for winner, row in zip(winners, outputs.tolist(), strict=False)
            ]
        return [{"value": value} for value in outputs.tolist()]


@dataclass
class ModelInfo:
    """A registered model: its schema and which version serves by default."""

    name: str
    task: str
    inputs: list[str]
    outputs: str
    active_version: int | None
    versions: dict[int, ModelEntry] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"version": self.active_version, "inputs": self.inputs, "outputs": self.outputs}


class InferenceService:
    """Loads models from the registry and serves them through dynamic batchers."""

    def __init__(self) -> None:
        self._models: dict[str, ModelInfo] = {}
        self._executors: dict[str, ThreadPoolExecutor] = {}
        self._lock = threading.Lock()
        self.loaded_at: float | None = None

    # -- loading --------------------------------------------------------------------

    def _executor(self, device: str) -> ThreadPoolExecutor:
        # One worker per device: a second thread on the same device would only
        # contend for it, and batching already fills each call.
        if device not in self._executors:
            self._executors[device] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"inference-{device}")
        return self._executors[device]

    def load_all(self) -> None:
        """Load and warm up every ready version in the registry; called before the server accepts connections."""
        from .models import MLModel, ModelVersion
        from .registry import load_runtime

        models: dict[str, ModelInfo] = {}
        queryset = MLModel.objects.prefetch_related("versions").order_by("name")
        for mlmodel in queryset:
            versions = [v for v in mlmodel.versions.all() if v.status != ModelVersion.Status.RETIRED]
            active = next((v.version for v in versions if v.is_active), None)
            info = ModelInfo(mlmodel.name, mlmodel.task, list(mlmodel.inputs), mlmodel.outputs, active)
            max_batch_size = mlmodel.max_batch_size or settings.PLATFORM_MAX_BATCH_SIZE
            max_delay_ms = mlmodel.max_delay_ms if mlmodel.max_delay_ms is not None else settings.PLATFORM_MAX_DELAY_MS
            queue_capacity = mlmodel.queue_capacity or settings.PLATFORM_QUEUE_CAPACITY
            for version in versions:
                entry = ModelEntry(
                    name=mlmodel.name,
                    version=version.version,
                    task=mlmodel.task,
                    schema=InputSchema(mlmodel.inputs),
                    outputs=mlmodel.outputs,
                )
                info.versions[version.version] = entry
                if version.status == ModelVersion.Status.FAILED:
                    entry.error = "This version is marked failed in the registry."
                    continue
                started = time.perf_counter()
                try:
                    runtime = load_runtime(version, max_batch_size=max_batch_size)
                    self.attach(entry, runtime, max_batch_size=max_batch_size, max_delay_ms=max_delay_ms,
                                queue_capacity=queue_capacity)
                except Exception as exc:
                    entry.error = str(exc)
                    logger.error("Could not load %s: %s", version, exc)
                    continue
                entry.load_ms = (time.perf_counter() - started) * 1000.0
                logger.info("Loaded %s on %s in %.0f ms", version, runtime.device, entry.load_ms)
            models[mlmodel.name] = info
        with self._lock:
            self._models = models
            self.loaded_at = time.time()

    def attach(self, entry: ModelEntry, runtime: Runtime, *, max_batch_size: int, max_delay_ms: float,
               queue_capacity: int) -> None:
        """Serve ``entry`` with ``runtime`` behind a new dynamic batcher."""
        if entry.task == "classification":
            self._check_classes(entry, runtime)
        entry.classes = runtime.classes
        entry.device = runtime.device
        entry.batcher = DynamicBatcher(
            runtime.predict,
            executor=self._executor(runtime.device),
            max_batch_size=max_batch_size,
            max_delay_ms=max_delay_ms,
            queue_capacity=queue_capacity,
            name=f"{entry.name} v{entry.version}",
            on_batch=self._batch_observer(entry.name, entry.version),
        )

    @staticmethod
    def _check_classes(entry: ModelEntry, runtime: Runtime) -> None:
        """Refuse a classifier whose probability columns do not match its class labels."""
        probe = runtime.predict(np.zeros((1, entry.schema.n_features)))
        classes = runtime.classes or []
        if probe.ndim != 2 or probe.shape[1] != len(classes):
            raise ArtifactError(
                f"{entry.name} v{entry.version} is a classifier with {len(classes)} class labels, "
                f"but its model returns {probe.shape[1] if probe.ndim == 2 else 'no'} probability columns."
            )

    def add_model(self, info: ModelInfo) -> None:
        """Serve a model that was built in code rather than loaded from the registry."""
        with self._lock:
            self._models = {**self._models, info.name: info}

    def _batch_observer(self, name: str, version: int) -> Callable[[BatchStats], None]:
        def observe(stats: BatchStats) -> None:
            events.batch(name, version, stats)

        return observe

    # -- lookup ---------------------------------------------------------------------

    def model_names(self) -> list[str]:
        return list(self._models)

    def has_model(self, name: str) -> bool:
        return name in self._models

    def entry(self, name: str, version: int | None = None, allowed: Iterable[str] | None = None) -> ModelEntry:
        """Return the entry that serves ``name`` (at ``version``, default the active one)."""
        info = self._models.get(name)
        if info is None or (allowed is not None and name not in allowed):
            raise UnknownModel(f"There is no model named {name!r} available to this key.")
        number = info.active_version if version is None else version
        if number is None:
            raise ModelUnavailable(f"The model {name!r} has no active version.")
        entry = info.versions.get(number)
        if entry is None:
            raise UnknownModel(f"The model {name!r} has no version {number}.")
        if entry.batcher is None:
            raise ModelUnavailable(f"Version {number} of {name!r} is not loaded: it failed to load.")
        return entry

    def catalog(self, allowed: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """The ``models`` object of the protocol's ``ready`` message."""
        allowed_set = None if allowed is None else set(allowed)
        return {
            name: info.describe()
            for name, info in self._models.items()
            if allowed_set is None or name in allowed_set
        }

    def entries(self) -> list[ModelEntry]:
        return [entry for info in self._models.values() for entry in info.versions.values()]

    def health(self) -> dict[str, Any]:
        loaded = [f"{e.name}:{e.version}" for e in self.entries() if e.ready]
        failed = {f"{e.name}:{e.version}": e.error for e in self.entries() if not e.ready}
        return {"ready": self.loaded_at is not None, "loaded": loaded, "failed": failed}

    # -- serving --------------------------------------------------------------------

    def submit(self, entry: ModelEntry, rows: np.ndarray, *, received_at: float) -> asyncio.Future[BatchResult]:
        """Queue rows for ``entry``; returns a future of ``BatchResult``. Raises ``Overloaded`` when full."""
        if entry.batcher is None:
            raise ModelUnavailable(f"Version {entry.version} of {entry.name!r} is not loaded.")
        return entry.batcher.submit(
            rows, timeout_s=settings.PLATFORM_REQUEST_TIMEOUT_MS / 1000.0, now=received_at
        )

    async def predict(self, entry: ModelEntry, rows: np.ndarray, *, received_at: float | None = None) -> BatchResult:
        received = time.perf_counter() if received_at is None else received_at
        return await self.submit(entry, rows, received_at=received)

    def shutdown(self) -> None:
        for executor in self._executors.values():
            executor.shutdown(wait=True, cancel_futures=False)


_service: InferenceService | None = None
_service_lock = threading.Lock()


def get_service() -> InferenceService:
    """The process-wide inference pool."""
    global _service
    if _service is None:
        with _service_lock:
            if _service is None:
                _service = InferenceService()
    return _service


__all__ = ["InferenceService", "ModelEntry", "get_service", "InferenceError"]
