"""The shadow: a copy of a request, run on the model's shadow version after the client has its reply.

Rules:

- the copy is made only once the active version's answer is ready, and runs
  after the reply's callback (one event-loop turn later), on the shadow
  version's own batcher: the client's answer never waits for it;
- the shadow is dropped first under load, and counted: when the active
  version's queue is half full, when too many copies wait already, or when
  the shadow's own queue is full; a client's request is never refused for it;
- a shadow that fails (raises, times out, was unloaded) is reported as
  failed; the client, who has its answer, never sees it;
- each copy is reported to the shadow observers (``platform_core`` wires the
  monitoring's): failed or dropped at once, each; compared ones together, up
  to ``COMPARE_BATCH`` requests or what the shadow answered within
  ``COMPARE_DELAY_S``, in one vectorised comparison (one request at a time,
  numpy's per-call overhead would cost more than the rest of the copy).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import partial

import numpy as np

from ..batching import BatchResult
from ..exceptions import Overloaded
from ..served import ServedModel, ServedVersion
from .compare import Comparison, compare
from .routing import Draw, in_share

logger = logging.getLogger(__name__)

#: Answers of one version pair compared together: at most this many requests, or those of this long.
COMPARE_BATCH = 256
COMPARE_DELAY_S = 0.25


class ShadowStatus(StrEnum):
    COMPARED = "compared"
    FAILED = "failed"
    DROPPED = "dropped"


class DropReason(StrEnum):
    """Why a copy was not run: the bounded ``reason`` label of the dropped-shadow metric."""

    #: The active version's queue was at least half full: its requests come first.
    PRIMARY_BUSY = "primary_busy"
    #: As many copies as ``max_pending`` were waiting for the shadow already.
    SHADOW_BUSY = "shadow_busy"
    #: The shadow version's own queue was full.
    SHADOW_QUEUE_FULL = "shadow_queue_full"
    #: The shadow version was unloaded before the copy could run.
    UNLOADED = "unloaded"


@dataclass(frozen=True, slots=True)
class ShadowReport:
    """What became of one copy of a request."""

    model: str
    #: The version that answered the client, and the shadow.
    primary_version: int
    shadow_version: int
    #: Wall-clock time (Unix seconds) the (first) primary answer was ready.
    at: float
    status: ShadowStatus
    comparison: Comparison | None = None
    #: Each version's time in its batcher (queue and model call) for these rows: summed over the requests.
    primary_ms: float | None = None
    shadow_ms: float | None = None
    #: A drop's ``DropReason``, or why the shadow failed.
    reason: str = ""
    #: The requests this report stands for (compared ones are reported together), and their longest times.
    requests: int = 1
    primary_ms_max: float | None = None
    shadow_ms_max: float | None = None


ShadowObserver = Callable[[ShadowReport], None]
_observers: list[ShadowObserver] = []


def observe_shadows(observer: ShadowObserver) -> None:
    """Call ``observer(report)`` on the event loop for every copy of a request; it must return at once."""
    if observer not in _observers:
        _observers.append(observer)


def stop_observing(observer: ShadowObserver) -> None:
    while observer in _observers:
        _observers.remove(observer)


def _report(report: ShadowReport) -> None:
    for observer in list(_observers):
        try:
            observer(report)
        except Exception:  # an observer must never cost a reply
            logger.exception("Shadow observer %r failed", observer)


class ShadowRunner:
    """Copies sampled requests of the active version to the model's shadow version."""

    def __init__(self, *, max_pending: int, timeout_s: float) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, not {max_pending!r}.")
        self.max_pending = max_pending
        self.timeout_s = timeout_s
        #: Copies submitted to a shadow batcher and not answered yet.
        self.pending = 0
        #: Answered copies waiting to be compared, per (model, version, shadow version).
        self._answered_copies: dict[tuple[str, int, int], _Waiting] = {}
        self._timer: asyncio.TimerHandle | None = None

    def follow(self, info: ServedModel | None, entry: ServedVersion, rows: np.ndarray,
               future: asyncio.Future[BatchResult], key: int) -> None:
        """Copy the request of ``future`` to the shadow once it is answered, if the model's sample takes it."""
        rollout = info.rollout if info is not None else None
        if rollout is None or rollout.shadow_version is None or rollout.shadow_version == entry.version:
            return
        if not in_share(key, Draw.SHADOW, rollout.shadow_sample_pct):
            return
        shadow = info.versions.get(rollout.shadow_version) if info is not None else None
        if shadow is None or not shadow.ready:
            return  # not loaded in this process (yet): there is nothing to compare with
        future.add_done_callback(partial(self._answered, entry, shadow, rows))

    def _answered(self, entry: ServedVersion, shadow: ServedVersion, rows: np.ndarray,
                  future: asyncio.Future[BatchResult]) -> None:
        # The reply's own callback was scheduled with this one: let it run first.
        future.get_loop().call_soon(self._run, entry, shadow, rows, future, time.time())

    def _run(self, entry: ServedVersion, shadow: ServedVersion, rows: np.ndarray,
             future: asyncio.Future[BatchResult], at: float) -> None:
        if future.cancelled() or future.exception() is not None:
            return  # the client got an error: there is no answer to compare
        primary = future.result()

        def dropped(reason: DropReason) -> None:
            _report(ShadowReport(entry.name, entry.version, shadow.version, at, ShadowStatus.DROPPED,
                                 reason=reason.value))

        batcher, own = shadow.batcher, entry.batcher
        if batcher is None:
            return dropped(DropReason.UNLOADED)
        if own is not None and own.queue_depth * 2 >= own.queue_capacity:
            return dropped(DropReason.PRIMARY_BUSY)
        if self.pending >= self.max_pending:
            return dropped(DropReason.SHADOW_BUSY)
        try:
            copy = batcher.submit(rows, timeout_s=self.timeout_s)
        except Overloaded:
            return dropped(DropReason.SHADOW_QUEUE_FULL)
        except Exception as exc:  # closed meanwhile
            return _report(ShadowReport(entry.name, entry.version, shadow.version, at, ShadowStatus.FAILED,
                                        reason=str(exc) or type(exc).__name__))
        self.pending += 1
        copy.add_done_callback(partial(self._compared, entry, shadow, rows, primary, at))

    def _compared(self, entry: ServedVersion, shadow: ServedVersion, rows: np.ndarray, primary: BatchResult,
                  at: float, copy: asyncio.Future[BatchResult]) -> None:
        self.pending -= 1
        primary_ms = primary.queue_ms + primary.inference_ms
        report = partial(ShadowReport, entry.name, entry.version, shadow.version, at, primary_ms=primary_ms)
        if copy.cancelled():
            return _report(report(ShadowStatus.FAILED, reason="cancelled"))
        error = copy.exception()
        if error is not None:
            return _report(report(ShadowStatus.FAILED, reason=str(error) or type(error).__name__))
        result = copy.result()
        key = (entry.name, entry.version, shadow.version)
        waiting = self._answered_copies.get(key)
        if waiting is None:
            waiting = self._answered_copies[key] = _Waiting(entry, shadow)
        waiting.add(rows, primary.outputs, result.outputs, primary_ms, result.queue_ms + result.inference_ms, at)
        if len(waiting.rows) >= COMPARE_BATCH:
            self._compare(key)
        elif self._timer is None:
            self._timer = copy.get_loop().call_later(COMPARE_DELAY_S, self.compare_waiting)

    def compare_waiting(self) -> None:
        """Compare every answered copy waiting (called ``COMPARE_DELAY_S`` after the first one)."""
        self._timer = None
        for key in list(self._answered_copies):
            self._compare(key)

    def _compare(self, key: tuple[str, int, int]) -> None:
        waiting = self._answered_copies.pop(key)
        entry, shadow = waiting.entry, waiting.shadow
        report = partial(ShadowReport, entry.name, entry.version, shadow.version, waiting.at[0],
                         requests=len(waiting.rows), primary_ms=sum(waiting.primary_ms),
                         primary_ms_max=max(waiting.primary_ms))
        try:
            rows = np.concatenate(waiting.rows)
            comparison = compare(entry.task, rows, _stacked(waiting.primary, waiting.rows),
                                 _stacked(waiting.shadow_outputs, waiting.rows),
                                 primary_classes=entry.classes, shadow_classes=shadow.classes)
        except Exception as exc:  # outputs of shapes that cannot be compared
            logger.warning("Could not compare %s v%d with v%d: %s", entry.name, entry.version, shadow.version, exc)
            return _report(report(ShadowStatus.FAILED, reason=f"not comparable: {exc}"))
        _report(report(ShadowStatus.COMPARED, comparison=comparison, shadow_ms=sum(waiting.shadow_ms),
                       shadow_ms_max=max(waiting.shadow_ms)))


class _Waiting:
    """Answered copies of one version pair, waiting to be compared together."""

    __slots__ = ("at", "entry", "primary", "primary_ms", "rows", "shadow", "shadow_ms", "shadow_outputs")

    def __init__(self, entry: ServedVersion, shadow: ServedVersion) -> None:
        self.entry, self.shadow = entry, shadow
        self.rows: list[np.ndarray] = []
        self.primary: list[np.ndarray] = []
        self.shadow_outputs: list[np.ndarray] = []
        self.primary_ms: list[float] = []
        self.shadow_ms: list[float] = []
        self.at: list[float] = []

    def add(self, rows: np.ndarray, primary: np.ndarray, shadow: np.ndarray, primary_ms: float, shadow_ms: float,
            at: float) -> None:
        self.rows.append(rows)
        self.primary.append(primary)
        self.shadow_outputs.append(shadow)
        self.primary_ms.append(primary_ms)
        self.shadow_ms.append(shadow_ms)
        self.at.append(at)


def _stacked(outputs: list[np.ndarray], rows: list[np.ndarray]) -> np.ndarray:
    """Each request's outputs as a 2-D block of its rows, stacked."""
    return np.concatenate([np.asarray(out, dtype=np.float64).reshape(len(r), -1) for out, r in zip(outputs, rows,
                                                                                                   strict=True)])
