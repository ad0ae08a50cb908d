"""The in-process inference pool: every loaded model version behind its own dynamic batcher."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from django.conf import settings

from .batching import BatchResult, BatchStats, DynamicBatcher
from .exceptions import ArtifactError, ModelUnavailable, UnknownModel
from .runtimes.base import Runtime
from .schema import InputSchema
from .served import NO_LABEL, ModelState, ServedModel, ServedVersion, VersionState

logger = logging.getLogger(__name__)

#: Called on the event loop after every model call: ``observer(model, version, stats)``.
BatchObserver = Callable[[str, int, BatchStats], None]

# Process-wide, like the pool itself: whoever observes (monitoring, through the
# composition root) does not need to know which pool instance serves.
_batch_observers: list[BatchObserver] = []


def observe_batches(observer: BatchObserver) -> None:
    """Call ``observer(model, version, stats)`` after every model call of this process; it must return at once."""
    if observer not in _batch_observers:
        _batch_observers.append(observer)


class InferenceService:
    """Loads models from the registry and serves them through dynamic batchers."""

    def __init__(self) -> None:
        self._models: dict[str, ServedModel] = {}
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
        from .artifacts import load_runtime
        from .models import MLModel, ModelVersion

        models: dict[str, ServedModel] = {}
        queryset = MLModel.objects.prefetch_related("versions").order_by("name")
        for mlmodel in queryset:
            versions = [v for v in mlmodel.versions.all() if v.status != ModelVersion.Status.RETIRED]
            active = next((v.version for v in versions if v.is_active), None)
            info = ServedModel(mlmodel.name, mlmodel.task, list(mlmodel.inputs), mlmodel.outputs, active)
            max_batch_size = mlmodel.max_batch_size or settings.PLATFORM_MAX_BATCH_SIZE
            max_delay_ms = mlmodel.max_delay_ms if mlmodel.max_delay_ms is not None else settings.PLATFORM_MAX_DELAY_MS
            queue_capacity = mlmodel.queue_capacity or settings.PLATFORM_QUEUE_CAPACITY
            for version in versions:
                entry = ServedVersion(
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

    def attach(self, entry: ServedVersion, runtime: Runtime, *, max_batch_size: int, max_delay_ms: float,
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
    def _check_classes(entry: ServedVersion, runtime: Runtime) -> None:
        """Refuse a classifier whose probability columns do not match its class labels."""
        probe = runtime.predict(np.zeros((1, entry.schema.n_features)))
        classes = runtime.classes or []
        if probe.ndim != 2 or probe.shape[1] != len(classes):
            raise ArtifactError(
                f"{entry.name} v{entry.version} is a classifier with {len(classes)} class labels, "
                f"but its model returns {probe.shape[1] if probe.ndim == 2 else 'no'} probability columns."
            )

    def add_model(self, info: ServedModel) -> None:
        """Serve a model that was built in code rather than loaded from the registry."""
        with self._lock:
            self._models = {**self._models, info.name: info}

    def _batch_observer(self, name: str, version: int) -> Callable[[BatchStats], None]:
        def observe(stats: BatchStats) -> None:
            for observer in _batch_observers:
                try:
                    observer(name, version, stats)
                except Exception:  # an observer must never cost a reply
                    logger.exception("Batch observer %r failed", observer)

        return observe

    # -- lookup ---------------------------------------------------------------------

    def model_names(self) -> list[str]:
        return list(self._models)

    def has_model(self, name: str) -> bool:
        return name in self._models

    def entry(self, name: str, version: int | None = None, allowed: Iterable[str] | None = None) -> ServedVersion:
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

    def entries(self) -> list[ServedVersion]:
        return [entry for info in self._models.values() for entry in info.versions.values()]

    def labels(self, model: Any, version: Any) -> tuple[str, str]:
        """Bounded ``(model, version)`` label values for what a request named.

        The name and number where this process serves them, :data:`NO_LABEL`
        for anything else, so that made-up names cannot grow a metric or a
        dashboard table.
        """
        info = self._models.get(model) if isinstance(model, str) else None
        if info is None:
            return NO_LABEL, NO_LABEL
        if type(version) is not int or version not in info.versions:
            return model, NO_LABEL
        return model, str(version)

    def snapshot(self) -> list[ModelState]:
        """Every served model's state at this moment: its active version, each version's queue and model call."""
        return [
            ModelState(info.name, info.active_version, tuple(
                VersionState(
                    version=entry.version, loaded=entry.batcher is not None, device=entry.device,
                    queue_depth=0 if entry.batcher is None else entry.batcher.queue_depth,
                    computing_rows=0 if entry.batcher is None else entry.batcher.in_flight_rows,
                )
                for entry in info.versions.values()
            ))
            for info in self._models.values()
        ]

    def health(self) -> dict[str, Any]:
        loaded = [f"{e.name}:{e.version}" for e in self.entries() if e.ready]
        failed = {f"{e.name}:{e.version}": e.error for e in self.entries() if not e.ready}
        return {"ready": self.loaded_at is not None, "loaded": loaded, "failed": failed}

    # -- serving --------------------------------------------------------------------

    def submit(self, entry: ServedVersion, rows: np.ndarray, *, received_at: float) -> asyncio.Future[BatchResult]:
        """Queue rows for ``entry``; returns a future of ``BatchResult``. Raises ``Overloaded`` when full."""
        if entry.batcher is None:
            raise ModelUnavailable(f"Version {entry.version} of {entry.name!r} is not loaded.")
        return entry.batcher.submit(
            rows, timeout_s=settings.PLATFORM_REQUEST_TIMEOUT_MS / 1000.0, now=received_at
        )

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


__all__ = ["InferenceService", "ServedModel", "ServedVersion", "get_service"]
