"""This process's live statistics, published on the channel layer once a second.

The sinks registered on ``monitoring.events`` run on the event loop for every
request, connection and batch, so they only bump counters and append to
bounded lists. Everything else (percentiles, per-second deltas, shortening the
sampled inputs and outputs, reading the queues) happens once a second in a
publisher task, which ``group_send``s one snapshot to ``DASHBOARD_GROUP``
whether or not anyone watches: every dashboard consumer, in any process
sharing the channel layer, then sees every process.

The publisher is started on the running loop by the first event or the first
dashboard connection, never at import time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterable
from random import random
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured

from inference.outcomes import Outcome
from monitoring import events

from .latency import latency_summary
from .shorten import shorten, shorten_outputs, shorten_rows

if TYPE_CHECKING:
    from inference.served import ModelState

logger = logging.getLogger(__name__)

#: What the server serves right now; handed in by the composition root, which
#: knows the inference pool (this package does not).
ServingState = Callable[[], Iterable["ModelState"]]

#: The channel-layer group every process publishes to and every dashboard joins.
DASHBOARD_GROUP = "dashboard"
#: The channel-layer message type, handled by ``DashboardConsumer.dashboard_snapshot``.
SNAPSHOT_TYPE = "dashboard.snapshot"
PUBLISH_INTERVAL_S = 1.0
# A snapshot that could not be handed to the channel layer in this time is
# dropped: the next one, a second later, supersedes it anyway.
PUBLISH_TIMEOUT_S = 5.0
# Latencies kept per second for the percentiles: exact up to this many
# requests a second, a uniform sample (reservoir) of this size beyond, so a
# burst cannot grow the list without bound.
LATENCY_SAMPLE_LIMIT = 10_000
# Predictions, and as many errors, kept a second for the live feed; the rest
# are only counted. The feed shows what traffic looks like; it is not a log.
RECENT_PER_SECOND = 5
# Batch sizes are counted in power-of-two buckets: 1, 2-3, 4-7, ... 1024 and up.
BATCH_BUCKETS = 11
BATCH_BUCKET_LABELS = [
    str(1 << i) if i == 0 else (f"{1 << i}+" if i == BATCH_BUCKETS - 1 else f"{1 << i}–{(1 << (i + 1)) - 1}")
    for i in range(BATCH_BUCKETS)
]
# Error codes are the platform's own, a short fixed list; this bound only
# guards the dictionary against a bug that would invent new ones per request.
MAX_ERROR_CODES = 32


class ModelCounters:
    """Cumulative counts of one model since this process started."""

    __slots__ = ("predictions", "rows", "errors")

    def __init__(self) -> None:
        self.predictions = 0
        self.rows = 0
        self.errors = 0

    def as_tuple(self) -> tuple[int, int, int]:
        return self.predictions, self.rows, self.errors


class StatsAggregator:
    """Counts what this process serves and publishes it once a second."""

    def __init__(self, *, group: str = DASHBOARD_GROUP, interval_s: float = PUBLISH_INTERVAL_S,
                 recent_per_second: int = RECENT_PER_SECOND,
                 latency_sample_limit: int = LATENCY_SAMPLE_LIMIT, enabled: bool = True,
                 serving_state: ServingState | None = None) -> None:
        if interval_s <= 0:
            raise ImproperlyConfigured(f"interval_s must be a positive number of seconds, not {interval_s!r}.")
        if latency_sample_limit < 1:
            raise ImproperlyConfigured(f"latency_sample_limit must be at least 1, not {latency_sample_limit!r}.")
        #: False until ``install()``: a process whose sinks are not registered
        #: publishes nothing rather than a snapshot of zeros.
        self.enabled = enabled
        self.group = group
        self.interval_s = interval_s
        self.recent_per_second = recent_per_second
        self.latency_sample_limit = latency_sample_limit
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.started_at = time.time()
        #: What the server serves, read once a second for the snapshot (``install()`` sets it).
        self.serving_state = serving_state
        # -- touched by the sinks, on the event loop
        self.connections = 0
        self.dashboards = 0
        self.in_flight = 0
        self.in_flight_peak = 0
        self.batches = 0
        self.batch_sizes = [0] * BATCH_BUCKETS
        self.errors: dict[str, int] = {}
        self._models: dict[Any, ModelCounters] = {}
        # Requests that named no model this process serves (a bad frame, an
        # unknown name): counted in the totals, never given a row of their own.
        self._unattributed = ModelCounters()
        self._latencies: list[float] = []
        self._latencies_seen = 0
        self._recent: list[events.PredictionEvent] = []
        self._recent_errors: list[events.PredictionEvent] = []
        # -- the publisher's own state
        self._publisher: asyncio.Task[None] | None = None
        self._publishing = False
        self._last_publish = time.monotonic()
        self._previous_models: dict[str, tuple[int, int, int]] = {}
        self._previous_errors: dict[str, int] = {}
        self._previous_batches = 0
        self._previous_batch_sizes = [0] * BATCH_BUCKETS
        self._failures = 0

    @property
    def process_id(self) -> str:
        return f"{self.host}:{self.pid}"

    # -- the sinks (monitoring.events), called on the event loop --------------------

    def observe_prediction(self, event: events.PredictionEvent) -> None:
        """Called for every answered request, with its prediction or error."""
        if not self._publishing:
            self.ensure_publishing()
        counters = self._models.get(event.labels[0])
        if counters is None:
            counters = self._counters_for(event.labels[0])
        if event.outcome == Outcome.OK:
            counters.predictions += 1
            counters.rows += event.rows
            total_ms = event.total_ms
            if total_ms is not None:
                latencies = self._latencies
                if len(latencies) < self.latency_sample_limit:
                    latencies.append(total_ms)
                else:
                    # Reservoir sampling (Algorithm R): every latency of the
                    # second has the same chance to be among those kept.
                    slot = int(random() * (self._latencies_seen + 1))
                    if slot < self.latency_sample_limit:
                        latencies[slot] = total_ms
                self._latencies_seen += 1
            if len(self._recent) < self.recent_per_second:
                # The event itself is kept; shortening it waits for the publisher.
                self._recent.append(event)
        else:
            counters.errors += 1
            code = event.outcome
            if code in self.errors:
                self.errors[code] += 1
            else:
                self._new_error_code(code)
            # Errors get places of their own in the feed, so that a few of
            # them among much traffic are still seen.
            if len(self._recent_errors) < self.recent_per_second:
                self._recent_errors.append(event)

    def observe_connection(self, delta: int) -> None:
        """Called when a prediction or dashboard connection opens (+1) or closes (-1)."""
        if not self._publishing:
            self.ensure_publishing()
        self.connections += delta

    def observe_in_flight(self, delta: int) -> None:
        """Called when a request is accepted for a model (+1) and when it is answered (-1)."""
        self.in_flight += delta
        if self.in_flight > self.in_flight_peak:
            self.in_flight_peak = self.in_flight

    def observe_batch(self, model: str, version: int, stats: Any) -> None:
        """Called after every model call with its ``BatchStats``."""
        rows = stats.rows
        self.batches += 1
        self.batch_sizes[min(max(rows, 1).bit_length(), BATCH_BUCKETS) - 1] += 1

    def dashboard_opened(self) -> None:
        """Called by the dashboard consumer when a dashboard connects (it also reports a connection)."""
        self.dashboards += 1
        self.ensure_publishing()

    def dashboard_closed(self) -> None:
        self.dashboards -= 1

    def _counters_for(self, model_label: str) -> ModelCounters:
        # Only names this process serves have a label of their own (the
        # event's bounded labels), so made-up model names cannot grow the dictionary.
        if model_label:
            counters = self._models[model_label] = ModelCounters()
            return counters
        return self._unattributed

    def _new_error_code(self, code: str) -> None:
        if len(self.errors) >= MAX_ERROR_CODES:
            code = Outcome.INTERNAL.value
        self.errors[code] = self.errors.get(code, 0) + 1

    # -- the publisher --------------------------------------------------------------

    def ensure_publishing(self) -> None:
        """Start the publisher on the running event loop unless it already runs there."""
        if not self.enabled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called from a thread: the next event on the loop starts it
            return
        task = self._publisher
        if task is not None and not task.done() and task.get_loop() is loop:
            self._publishing = True
            return
        if task is not None and not task.done() and not task.get_loop().is_closed():
            # A loop left running without us (tests run one loop per test):
            # its publisher is orphaned, and this loop's takes over.
            task.get_loop().call_soon_threadsafe(task.cancel)
        self._last_publish = time.monotonic()
        self._publisher = loop.create_task(self._publish_forever(), name="dashboard-stats-publisher")
        self._publisher.add_done_callback(self._publisher_done)
        self._publishing = True

    def _publisher_done(self, task: asyncio.Task[None]) -> None:
        if task is self._publisher:
            self._publishing = False
        if not task.cancelled() and task.exception() is not None:
            logger.error("The dashboard statistics publisher stopped", exc_info=task.exception())

    async def stop(self) -> None:
        """Stop the publisher; the next event or dashboard connection starts it again."""
        task, self._publisher = self._publisher, None
        self._publishing = False
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _publish_forever(self) -> None:
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        if layer is None:
            logger.warning("No channel layer is configured: the dashboard will not show this process.")
            return
        while True:
            # On whole seconds, so that every process's windows cover the same seconds.
            now = time.time()
            await asyncio.sleep(self.interval_s - now % self.interval_s)
            await self.publish(layer)

    async def publish(self, layer: Any) -> bool:
        """Send one snapshot to the group; a failure is logged and never stops the publisher."""
        try:
            snapshot = self.snapshot()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a
            # cancellation that arrives as group_send completes, and stop() waits forever.
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                await layer.group_send(self.group, {"type": SNAPSHOT_TYPE, "snapshot": snapshot})
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failures += 1
            # Once, then every minute: a channel layer that is down would
            # otherwise fill the log with one line a second.
            if self._failures == 1 or self._failures % 60 == 0:
                logger.warning("Could not publish dashboard statistics (%d failures so far): %s",
                               self._failures, exc, exc_info=self._failures == 1)
            return False
        if self._failures:
            logger.info("Publishing dashboard statistics again after %d failures", self._failures)
            self._failures = 0
        return True

    # -- the snapshot -----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """What this process did since the last snapshot, and since it started; resets the window."""
        now_mono = time.monotonic()
        interval_s = max(now_mono - self._last_publish, 1e-3)
        self._last_publish = now_mono

        latencies, self._latencies = self._latencies, []
        latencies_seen, self._latencies_seen = self._latencies_seen, 0
        recent, self._recent, self._recent_errors = self._recent + self._recent_errors, [], []
        recent.sort(key=lambda event: event.received_at)
        in_flight_peak, self.in_flight_peak = self.in_flight_peak, self.in_flight

        models = self._model_states()
        window_models: dict[str, dict[str, int]] = {}
        totals = {"predictions": 0, "rows": 0, "errors": 0}
        window = {"predictions": 0, "rows": 0, "errors": 0}
        counted = {**self._models, "": self._unattributed}
        for name, counters in counted.items():
            current = counters.as_tuple()
            before = self._previous_models.get(name, (0, 0, 0))
            self._previous_models[name] = current
            delta = tuple(after - then for after, then in zip(current, before, strict=True))
            for i, key in enumerate(("predictions", "rows", "errors")):
                totals[key] += current[i]
                window[key] += delta[i]
            if name:
                window_models[name] = dict(zip(("predictions", "rows", "errors"), delta, strict=True))
                state = models.setdefault(name, _model_state(None))
                state["totals"] = dict(zip(("predictions", "rows", "errors"), current, strict=True))
        for name, state in models.items():
            state["window"] = window_models.get(name, {"predictions": 0, "rows": 0, "errors": 0})
            state.setdefault("totals", {"predictions": 0, "rows": 0, "errors": 0})

        errors = dict(self.errors)
        window_errors = {code: n - self._previous_errors.get(code, 0) for code, n in errors.items()}
        self._previous_errors = errors
        batch_sizes = list(self.batch_sizes)
        window_batch_sizes = [n - m for n, m in zip(batch_sizes, self._previous_batch_sizes, strict=True)]
        window_batches = self.batches - self._previous_batches
        self._previous_batch_sizes, self._previous_batches = batch_sizes, self.batches

        return {
            "process": {"id": self.process_id, "host": self.host, "pid": self.pid, "started_at": self.started_at},
            "time": time.time(),
            "interval_s": round(interval_s, 4),
            "connections": max(0, self.connections - self.dashboards),
            "dashboards": self.dashboards,
            "in_flight": self.in_flight,
            "in_flight_peak": in_flight_peak,
            "window": {
                **window,
                "errors_by_code": {code: n for code, n in window_errors.items() if n},
                "latency_ms": latency_summary(latencies, count=latencies_seen),
                "batches": window_batches,
                "batch_sizes": window_batch_sizes,
            },
            "totals": {
                **totals,
                "errors_by_code": errors,
                "batches": self.batches,
                "batch_sizes": batch_sizes,
            },
            "models": models,
            "recent": [self._feed_item(event) for event in recent],
        }

    def _model_states(self) -> dict[str, dict[str, Any]]:
        """Active version, queue and model call of every model this process serves."""
        states: dict[str, dict[str, Any]] = {}
        if self.serving_state is None:
            return states
        for model in self.serving_state():
            state = states[model.name] = _model_state(model.active_version)
            for version in model.versions:
                if not version.loaded:
                    state["failed_versions"].append(version.version)
                    continue
                state["loaded_versions"].append(version.version)
                state["device"] = version.device
                state["queue_depth"] += version.queue_depth
                state["computing_rows"] += version.computing_rows
        return states

    def _feed_item(self, event: events.PredictionEvent) -> dict[str, Any]:
        return {
            "time": event.received_at,
            "process": self.process_id,
            "model": event.model if isinstance(event.model, str) else None,
            "version": event.version,
            "outcome": event.outcome,
            "rows": event.rows,
            "inputs": shorten_rows(event.inputs),
            "outputs": shorten_outputs(event.outputs) if event.outcome == Outcome.OK else shorten(event.error),
            "total_ms": _finite(event.total_ms),
            "batch_size": event.batch_size,
        }


def _model_state(active_version: int | None) -> dict[str, Any]:
    return {
        "active_version": active_version,
        "loaded_versions": [],
        "failed_versions": [],
        "device": None,
        "queue_depth": 0,
        "computing_rows": 0,
    }


def _finite(value: float | None, digits: int = 3) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)
