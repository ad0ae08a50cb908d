"""The in-process inference pool: every loaded model version behind its own dynamic batcher.

The pool follows the registry: ``reconcile()`` swaps versions in and out while
it serves (the rules are in ``inference.reconcile``); it tells observers it
does not know what changed (``inference.swaps``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from channels.db import database_sync_to_async
from django.conf import settings

from . import swaps
from .batching import BatchResult, BatchStats
from .exceptions import ArtifactError, ModelUnavailable, UnknownModel
from .loading import attach, load_version
from .reconcile import converge, versions_to_load
from .registry import Batching, RegisteredModel, fetch_versions, read_registry
from .rollout import routing
from .rollout.plan import Rollout
from .rollout.shadow import ShadowRunner
from .runtimes.base import Runtime
from .served import NO_LABEL, ModelState, ServedModel, ServedVersion, VersionState
from .swaps import CatalogChange, SwapFact, SwapStep

if TYPE_CHECKING:
    from .models import ModelVersion

logger = logging.getLogger(__name__)

#: A version that failed to load is tried again after this long (or at once if its file
#: changed): on another host its artifact may arrive late, but a broken file must not be
#: loaded again at every reconcile.
LOAD_RETRY_S = 30.0
#: The longest a new version's warm-up request may take, queued behind the device's other model calls.
WARM_UP_TIMEOUT_S = 30.0

#: Called on the event loop after every model call: ``observer(model, version, stats)``.
BatchObserver = Callable[[str, int, BatchStats], None]

# Process-wide, like the pool itself: whoever observes (monitoring, through the
# composition root) does not need to know which pool instance serves.
_batch_observers: list[BatchObserver] = []


def observe_batches(observer: BatchObserver) -> None:
    """Call ``observer(model, version, stats)`` after every model call of this process; it must return at once."""
    if observer not in _batch_observers:
        _batch_observers.append(observer)


@dataclass(frozen=True, slots=True)
class _Failure:
    """A version that could not be loaded: when, why, and the artifact's checksum at the time."""

    checksum: str
    at: float
    error: str

    def due(self, checksum: str, now: float) -> bool:
        """Whether to try loading it again."""
        return checksum != self.checksum or now - self.at >= LOAD_RETRY_S


class InferenceService:
    """Serves the registry's models through dynamic batchers, and follows the registry as it changes."""

    def __init__(self) -> None:
        self._models: dict[str, ServedModel] = {}
        self._executors: dict[str, ThreadPoolExecutor] = {}
        self._lock = threading.Lock()
        self.loaded_at: float | None = None
        #: The registry as the pool last acted on it, and the names it manages (models added in code are not).
        self._registry: dict[str, RegisteredModel] | None = None
        self._failures: dict[tuple[str, int], _Failure] = {}
        self._loader: ThreadPoolExecutor | None = None
        self._reconciling: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._shadows = ShadowRunner(max_pending=settings.PLATFORM_SHADOW_MAX_PENDING,
                                     timeout_s=settings.PLATFORM_REQUEST_TIMEOUT_MS / 1000.0)

    # -- loading --------------------------------------------------------------------

    def _executor(self, device: str) -> ThreadPoolExecutor:
        # One worker per device: a second thread on the same device would only
        # contend for it, and batching already fills each call.
        if device not in self._executors:
            self._executors[device] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"inference-{device}")
        return self._executors[device]

    def load_all(self) -> None:
        """Load and warm up every model's active version; called before the server accepts connections."""
        registry = read_registry()
        rows = fetch_versions((name, number) for name, registered in registry.items()
                              for number in versions_to_load(None, registered))
        models: dict[str, ServedModel] = {}
        for name, registered in registry.items():
            new: dict[int, ServedVersion] = {}
            errors: dict[int, str] = {}
            for number in versions_to_load(None, registered):
                started = time.perf_counter()
                try:
                    entry = self._load_row(rows.get((name, number)), registered, number)
                except Exception as exc:
                    errors[number] = self._load_failed(registered, number, exc)
                else:
                    new[number] = self._loaded(entry, started)
            models[name] = converge(None, registered, new=new, errors=errors).served
        with self._lock:
            self._models = models
            self._registry = registry
            self.loaded_at = time.time()
        for name, served in models.items():
            active = served.versions.get(served.active_version) if served.active_version is not None else None
            if active is not None and active.ready:
                swaps.swap_fact(SwapFact(SwapStep.ACTIVATED, name, active.version))

    def _load_row(self, row: ModelVersion | None, registered: RegisteredModel, number: int) -> ServedVersion:
        if row is None:
            raise ArtifactError(f"{registered.name} v{number} is no longer in the registry.")
        return load_version(row, registered.batching, self._executor)

    def _loaded(self, entry: ServedVersion, started: float) -> ServedVersion:
        """Count a version as loaded: its model calls are observed from now on."""
        if entry.batcher is not None:
            entry.batcher.on_batch = self._batch_observer(entry.name, entry.version)
        seconds = time.perf_counter() - started
        entry.load_ms = seconds * 1000.0
        self._failures.pop((entry.name, entry.version), None)
        logger.info("Loaded %s v%d on %s (%s) in %.0f ms", entry.name, entry.version, entry.device, entry.engine,
                    entry.load_ms)
        swaps.swap_fact(SwapFact(SwapStep.LOADED, entry.name, entry.version, seconds=seconds))
        return entry

    def _load_failed(self, registered: RegisteredModel, number: int, exc: BaseException) -> str:
        """Remember a version that could not be loaded, so that it is not tried again at every reconcile."""
        error = str(exc) or type(exc).__name__
        version = registered.versions.get(number)
        self._failures[(registered.name, number)] = _Failure(version.checksum if version else "", time.monotonic(),
                                                             error)
        logger.error("Could not load %s v%d: %s", registered.name, number, error)
        swaps.swap_fact(SwapFact(SwapStep.LOAD_FAILED, registered.name, number, error=error))
        return error

    def attach(self, entry: ServedVersion, runtime: Runtime, *, max_batch_size: int, max_delay_ms: float,
               queue_capacity: int) -> None:
        """Serve ``entry`` with ``runtime`` behind a new dynamic batcher."""
        attach(entry, runtime, executor=self._executor(runtime.device),
               batching=Batching(max_batch_size, max_delay_ms, queue_capacity),
               on_batch=self._batch_observer(entry.name, entry.version))

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

    # -- following the registry -------------------------------------------------------

    async def reconcile(self) -> list[CatalogChange]:
        """Serve what the registry says; returns the catalog entries that changed (none when nothing did).

        One query when nothing changed. Otherwise each model converges in
        turn (``inference.reconcile`` has the rules): a version to serve is
        loaded in a thread and warmed up, then swapped in by replacing the
        model's entry at once, so a request sees either the old or the new
        version; requests already accepted finish on the version that
        accepted them. One reconcile at a time: a second call waits for the
        first and then finds nothing left to do.
        """
        async with self._reconcile_lock():
            registry = await database_sync_to_async(read_registry)()
            now = time.monotonic()
            if registry == self._registry and not self._retry_due(registry, now):
                return []
            changes: list[CatalogChange] = []
            for registered in registry.values():
                change = await self._converge_model(registered, now)
                if change is not None:
                    changes.append(change)
            for name in set(self._registry or ()) - set(registry):
                change = self._remove(name)
                if change is not None:
                    changes.append(change)
            self._registry = registry
            if self.loaded_at is None:
                self.loaded_at = time.time()
            return changes

    def _reconcile_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._reconciling is None or self._reconciling[0] is not loop:
            self._reconciling = (loop, asyncio.Lock())
        return self._reconciling[1]

    def _not_now(self, registered: RegisteredModel, now: float) -> dict[int, str]:
        """Versions of the model that failed to load lately (and have not changed since), with the reason."""
        skipped = {}
        for (name, number), failure in self._failures.items():
            version = registered.versions.get(number)
            if name == registered.name and version is not None and not failure.due(version.checksum, now):
                skipped[number] = failure.error
        return skipped

    def _retry_due(self, registry: dict[str, RegisteredModel], now: float) -> bool:
        """Whether a version the registry wants served failed to load long enough ago to be tried again."""
        for (name, number), failure in self._failures.items():
            registered = registry.get(name)
            version = registered.versions.get(number) if registered is not None else None
            if version is not None and registered is not None and registered.active_version == number \
                    and failure.due(version.checksum, now):
                return True
        return False

    async def _converge_model(self, registered: RegisteredModel, now: float) -> CatalogChange | None:
        name = registered.name
        current = self._models.get(name)
        not_now = self._not_now(registered, now)
        wanted = versions_to_load(current, registered, not_now=not_now)
        errors = {number: error for number, error in not_now.items() if number == registered.active_version}
        new: dict[int, ServedVersion] = {}
        if wanted:
            rows = await database_sync_to_async(fetch_versions)((name, number) for number in wanted)
            for number in wanted:
                loaded = await self._load(rows.get((name, number)), registered, number)
                if isinstance(loaded, str):
                    errors[number] = loaded
                else:
                    new[number] = loaded
        # From the entry as it is now: requests go on being served while the new version loads.
        result = converge(self._models.get(name), registered, new=new, errors=errors)
        for entry in result.dropped:
            self._drop(entry)
        return self._swap(name, result.served) if result.changed else None

    async def _load(self, row: ModelVersion | None, registered: RegisteredModel,
                    number: int) -> ServedVersion | str:
        """Load and warm up one version off the event loop; its entry, or why it could not be loaded."""
        loop = asyncio.get_running_loop()
        if self._loader is None:
            # One loader: two large models loading at once would only compete for memory and cores.
            self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference-loader")
        started = time.perf_counter()
        entry: ServedVersion | None = None
        try:
            entry = await loop.run_in_executor(self._loader, self._load_row, row, registered, number)
            await self._warm_up(entry)
        except Exception as exc:
            if entry is not None and entry.batcher is not None:
                await entry.batcher.close()
            return self._load_failed(registered, number, exc)
        return self._loaded(entry, started)

    @staticmethod
    async def _warm_up(entry: ServedVersion) -> None:
        """One request through the new batcher, so that the first client's does not start its worker."""
        if entry.batcher is None:
            raise ModelUnavailable(f"{entry.name} v{entry.version} has no batcher.")
        rows = np.zeros((1, entry.schema.n_features))
        async with asyncio.timeout(WARM_UP_TIMEOUT_S):
            await entry.batcher.submit(rows, timeout_s=WARM_UP_TIMEOUT_S)

    def _swap(self, name: str, served: ServedModel) -> CatalogChange | None:
        """Replace the model's entry in one assignment: a request sees the old one or the new one."""
        before = self._models.get(name)
        with self._lock:
            self._models = {**self._models, name: served}
        previous = before.active_version if before is not None else None
        active = served.versions.get(served.active_version) if served.active_version is not None else None
        if served.active_version != previous and active is not None and active.ready:
            logger.info("%s serves v%d%s", name, served.active_version,
                        "" if previous is None else f" instead of v{previous}, kept loaded as the standby"
                        if served.standby_version == previous else f" instead of v{previous}")
            swaps.swap_fact(SwapFact(SwapStep.ACTIVATED, name, served.active_version, previous=previous))
        return self._catalog_change(name, before, served)

    def _remove(self, name: str) -> CatalogChange | None:
        """Stop serving a model that is gone from the registry."""
        before = self._models.get(name)
        if before is None:
            return None
        with self._lock:
            self._models = {other: info for other, info in self._models.items() if other != name}
        for entry in before.versions.values():
            if entry.ready:
                self._drop(entry)
        return self._catalog_change(name, before, None)

    @staticmethod
    def _catalog_change(name: str, before: ServedModel | None, after: ServedModel | None) -> CatalogChange | None:
        change = CatalogChange(name, before.describe() if before is not None else None,
                               after.describe() if after is not None else None)
        if change.before == change.after:
            return None
        swaps.catalog_changed(change)
        return change

    def _drop(self, entry: ServedVersion) -> None:
        """Close a version no longer served once its batcher has answered what it holds."""
        swaps.swap_fact(SwapFact(SwapStep.DROPPED, entry.name, entry.version))
        task = asyncio.get_running_loop().create_task(self._close(entry), name=f"close:{entry.name}:{entry.version}")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close(entry: ServedVersion) -> None:
        batcher = entry.batcher
        if batcher is not None:
            await batcher.close()
        # Nothing refers to the runtime any more: its memory can go.
        entry.batcher = None
        entry.error = "This version was unloaded."
        logger.info("Unloaded %s v%d", entry.name, entry.version)

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
        if entry is None and number in info.unloaded:
            raise ModelUnavailable(
                f"Version {number} of {name!r} is not loaded: only the active version and the one it replaced are."
            )
        if entry is None:
            raise UnknownModel(f"The model {name!r} has no version {number}.")
        if entry.batcher is None:
            raise ModelUnavailable(f"Version {number} of {name!r} is not loaded: it failed to load.")
        return entry

    def rollout(self, name: str) -> Rollout | None:
        """The rollout this process follows for ``name`` (None for a model it does not serve)."""
        info = self._models.get(name)
        return info.rollout if info is not None else None

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

    def route(self, entry: ServedVersion, rows: np.ndarray, *, pinned: bool,
              request_id: Any) -> tuple[ServedVersion, int | None]:
        """The version that answers (``entry``, or the canary for its share) and the key to submit with."""
        return routing.route(self._models.get(entry.name), entry, rows, pinned=pinned, request_id=request_id)

    def submit(self, entry: ServedVersion, rows: np.ndarray, *, received_at: float,
               key: int | None = None) -> asyncio.Future[BatchResult]:
        """Queue rows for ``entry`` (with :meth:`route`'s ``key``, a copy for the shadow); raises ``Overloaded``."""
        if entry.batcher is None:
            raise ModelUnavailable(f"Version {entry.version} of {entry.name!r} is not loaded.")
        future = entry.batcher.submit(rows, timeout_s=settings.PLATFORM_REQUEST_TIMEOUT_MS / 1000.0, now=received_at)
        if key is not None:
            self._shadows.follow(self._models.get(entry.name), entry, rows, future, key)
        return future

    def shutdown(self) -> None:
        if self._loader is not None:
            self._loader.shutdown(wait=True, cancel_futures=True)
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


__all__ = ["CatalogChange", "InferenceService", "ServedModel", "ServedVersion", "get_service"]
