"""Prometheus metrics of the platform, all defined here at module level.

Names follow ``platform_<thing>_<unit|total>``; labels are bounded to model,
version, outcome and protocol, never a key, a client or a request id:

- ``model`` is the name of a model this process serves, or ``""`` for anything
  else (an unknown name, a frame that could not be parsed);
- ``version`` is a version number of that model, or ``""``;
- ``outcome`` is ``"ok"`` or one of the protocol's error codes;
- ``protocol`` is how the request came: ``websocket``, ``http`` or ``grpc``.

Several processes: when ``PROMETHEUS_MULTIPROC_DIR`` is set, every process's
values are kept in files under it and ``/metrics`` adds them up
(``monitoring.views``, ``monitoring.multiprocess``).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from inference import outcomes, served
from inference.outcomes import Outcome
from inference.swaps import SwapFact, SwapStep

from . import bulk_observe, events
from .bulk_observe import observe_many
from .multiprocess import check_mode as _check_mode
from .multiprocess import mark_process_dead, multiprocess_dir

if TYPE_CHECKING:
    from inference.batching import BatchStats
    from inference.served import ModelState

logger = logging.getLogger(__name__)

NAMESPACE = "platform"

#: Every ``outcome`` label value: "ok" and the protocol's error codes.
OUTCOMES = outcomes.OUTCOMES
#: The label value for a model or version that is not one this process serves.
NO_LABEL = served.NO_LABEL

# Fine enough to tell a 1 ms reply from a 2 ms one, wide enough to reach the
# default request timeout (PLATFORM_REQUEST_TIMEOUT_MS, 5 s).
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Powers of two up to the largest request a client may send (PLATFORM_MAX_ROWS).
BATCH_SIZE_BUCKETS = tuple(float(2**n) for n in range(11))

# -- requests (one observation per answered request) ---------------------------------

REQUESTS = Counter(
    "requests", "Prediction requests answered, by outcome (ok or the protocol's error code) and protocol.",
    ["model", "version", "outcome", "protocol"], namespace=NAMESPACE,
)
ERRORS = Counter(
    "errors", "Prediction requests answered with an error, by the protocol's error code and protocol.",
    ["model", "version", "outcome", "protocol"], namespace=NAMESPACE,
)
REQUEST_DURATION = Histogram(
    "request_duration_seconds",
    "Time from a request's arrival to its reply being handed to the socket.",
    ["model", "version", "outcome", "protocol"], namespace=NAMESPACE, buckets=LATENCY_BUCKETS_S,
)
QUEUE_WAIT = Histogram(
    "queue_wait_seconds", "Time a served request waited in its model's queue before the model call began.",
    ["model", "version"], namespace=NAMESPACE, buckets=LATENCY_BUCKETS_S,
)

# -- batches (one observation per model call) ----------------------------------------

ROWS = Counter(
    "rows", "Input rows served: rows of the model calls that succeeded.",
    ["model", "version"], namespace=NAMESPACE,
)
MODEL_CALL_DURATION = Histogram(
    "model_call_duration_seconds", "Time one model call took, on the whole batch.",
    ["model", "version"], namespace=NAMESPACE, buckets=LATENCY_BUCKETS_S,
)
MODEL_CALLS_INLINE = Counter(
    "model_calls_inline", "Model calls that ran on the event loop rather than in the model's thread "
    "(short calls of a GIL-holding runtime, PLATFORM_INLINE_CALLS_BELOW_MS).",
    ["model", "version"], namespace=NAMESPACE,
)
BATCH_SIZE = Histogram(
    "batch_size_rows", "Rows in one model call.",
    ["model", "version"], namespace=NAMESPACE, buckets=BATCH_SIZE_BUCKETS,
)
QUEUE_DEPTH = Gauge(
    "queue_depth_requests",
    "Requests waiting in a model's queue, as of the last model call or scrape.",
    ["model", "version"], namespace=NAMESPACE, multiprocess_mode="livesum",
)

# -- connections ----------------------------------------------------------------------

REQUESTS_IN_FLIGHT = Gauge(
    "requests_in_flight", "Prediction requests accepted for a model and not answered yet.",
    namespace=NAMESPACE, multiprocess_mode="livesum",
)
WEBSOCKET_CONNECTIONS = Gauge(
    "websocket_connections", "Open WebSocket connections, prediction and dashboard.",
    namespace=NAMESPACE, multiprocess_mode="livesum",
)

# -- model lifecycle (the pool's swaps; ``model`` is a name this process serves, or "") -----

MODEL_ACTIVE_VERSION = Gauge(
    "model_active_version", "The version that serves requests naming none, per model and server process.",
    # Per process: during a rollout, a process that has not swapped yet shows.
    ["model"], namespace=NAMESPACE, multiprocess_mode="liveall",
)
MODEL_SWAPS = Counter("model_swaps", "Times a server process swapped a model's active version.", ["model"],
                      namespace=NAMESPACE)
MODEL_LOAD_DURATION = Histogram(
    "model_load_seconds", "Time to load, check and warm up one model version, off the event loop.",
    ["model"], namespace=NAMESPACE, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
MODEL_LOAD_FAILURES = Counter(
    "model_load_failures", "Model versions that failed to load in a server process, or failed validation.",
    ["model", "stage"], namespace=NAMESPACE,
)

# -- labelled children, looked up once ------------------------------------------------
#
# ``labels()`` costs more than the observation itself, so each label
# combination's children are found once and kept in a dict keyed by what the
# event carries. Only events whose model and version this process serves are
# kept under their own key; anything else is mapped to the bounded labels on
# every call, so a client sending made-up names can grow neither the
# Prometheus series nor these dicts.
#
# Per-request observations are not handed to prometheus_client one by one
# (each ``inc`` and ``observe`` takes a lock, and in multiprocess mode writes
# a memory-mapped file): the sink appends the latencies to plain lists and
# :func:`flush` adds them up in bulk, one ``inc`` per histogram bucket, at
# least every ``FLUSH_INTERVAL_S``, every ``FLUSH_EVERY`` requests, and
# before every scrape (:func:`refresh`).

#: Per-request observations wait at most this long, or this many requests, for :func:`flush`.
FLUSH_INTERVAL_S = 1.0
FLUSH_EVERY = 4096


class RequestSeries:
    """The children of one (model, version, outcome, protocol) label set, and what waits to be added to them."""

    __slots__ = ("requests", "errors", "duration", "queue_wait", "count", "durations_ms", "queue_waits_ms")

    def __init__(self, model: str, version: str, outcome: str, protocol: str) -> None:
        self.requests = REQUESTS.labels(model, version, outcome, protocol)
        self.errors = ERRORS.labels(model, version, outcome, protocol) if outcome != Outcome.OK else None
        self.duration = REQUEST_DURATION.labels(model, version, outcome, protocol)
        self.queue_wait = QUEUE_WAIT.labels(model, version)
        self.count = 0
        self.durations_ms: list[float] = []
        self.queue_waits_ms: list[float] = []

    def flush(self) -> None:
        count, self.count = self.count, 0
        durations, self.durations_ms = self.durations_ms, []
        waits, self.queue_waits_ms = self.queue_waits_ms, []
        if count:
            self.requests.inc(count)
            if self.errors is not None:
                self.errors.inc(count)
        if durations:
            observe_many(self.duration, durations, 0.001)
        if waits:
            observe_many(self.queue_wait, waits, 0.001)


BatchSeries = tuple[Callable[[float], None], Callable[[float], None], Callable[[float], None],
                    Callable[[float], None], Callable[[], None]]

_request_series: dict[tuple[Any, Any, str, str], RequestSeries] = {}
_request_series_by_labels: dict[tuple[str, str, str, str], RequestSeries] = {}
_batch_series: dict[tuple[str, str], BatchSeries] = {}


class _Pending:
    """Requests observed since the last flush, and the loop whose timer will flush them."""

    requests = 0
    in_flight = 0
    loop: asyncio.AbstractEventLoop | None = None
    timer: asyncio.TimerHandle | None = None


_pending = _Pending()


def _new_request_series(model: str, version: str, outcome: str, protocol: str) -> RequestSeries:
    key = (model, version, outcome, protocol)
    series = _request_series_by_labels.get(key)
    if series is None:
        series = _request_series_by_labels[key] = RequestSeries(*key)
    return series


def _request_series_for(event: events.PredictionEvent) -> RequestSeries:
    model, version, outcome = event.model, event.version, event.outcome
    model_label, version_label = event.labels
    # Codes come from the platform, not the client; an unexpected one is a bug
    # to be seen as an internal error, not a new series.
    outcome_label = outcome if outcome in OUTCOMES else Outcome.INTERNAL.value
    protocol = event.protocol if event.protocol in events.PROTOCOLS else events.Protocol.WEBSOCKET.value
    series = _new_request_series(model_label, version_label, outcome_label, protocol)
    if model_label == model and (version is None or version_label == str(version)) and outcome_label == outcome:
        _request_series[(model, version, outcome, protocol)] = series
    return series


def _batch_series_for(model: str, version: int) -> BatchSeries:
    # Only served versions run model calls: their name and number are bounded labels.
    key = (model, str(version))
    series = _batch_series.get(key)
    if series is None:
        series = (
            BATCH_SIZE.labels(*key).observe,
            MODEL_CALL_DURATION.labels(*key).observe,
            ROWS.labels(*key).inc,
            QUEUE_DEPTH.labels(*key).set,
            MODEL_CALLS_INLINE.labels(*key).inc,
        )
        _batch_series[key] = series
    return series


# -- the sinks on monitoring.events --------------------------------------------------


def observe_prediction(event: events.PredictionEvent) -> None:
    """Called on the event loop for every answered request: remembers it for the next :func:`flush`."""
    series = _request_series.get((event.model, event.version, event.outcome, event.protocol))
    if series is None:
        series = _request_series_for(event)
    series.count += 1
    if event.total_ms is not None:
        series.durations_ms.append(event.total_ms)
    if event.queue_ms is not None:
        series.queue_waits_ms.append(event.queue_ms)
    pending = _pending
    pending.requests += 1
    if pending.timer is None or pending.requests >= FLUSH_EVERY:
        _schedule_flush()


def observe_in_flight(delta: int) -> None:
    """Called on the event loop when a request is accepted (+1) and answered (-1)."""
    _pending.in_flight += delta


def _schedule_flush() -> None:
    pending = _pending
    if pending.requests >= FLUSH_EVERY:
        flush()
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # called outside an event loop (a script, a test): nothing will come back later
        flush()
        return
    pending.loop = loop
    pending.timer = loop.call_later(FLUSH_INTERVAL_S, _flush_on_timer)


def _flush_on_timer() -> None:
    _pending.timer = None
    flush()


def flush() -> None:
    """Hand every per-request observation waiting in this process to prometheus_client.

    Runs on the thread that observes (the event loop's, when there is one);
    :func:`refresh` gets it there from any other.
    """
    pending = _pending
    pending.requests = 0
    if pending.timer is not None:
        pending.timer.cancel()
        pending.timer = None
    for series in list(_request_series_by_labels.values()):
        if series.count or series.durations_ms or series.queue_waits_ms:
            series.flush()
    REQUESTS_IN_FLIGHT.set(pending.in_flight)


def observe_batch(model: str, version: int, stats: BatchStats) -> None:
    """Called on the event loop after every model call, with its ``BatchStats``."""
    key = (model, str(version))
    series = _batch_series.get(key)
    if series is None:
        series = _batch_series_for(model, version)
    observe_size, observe_call, count_rows, set_queue_depth, count_inline = series
    observe_size(stats.rows)
    observe_call(stats.inference_ms * 0.001)
    if not stats.failed:
        count_rows(stats.rows)
    if stats.inline:
        count_inline()
    set_queue_depth(stats.queue_depth)


def observe_swap(fact: SwapFact) -> None:
    """Called for every load, failed load, activation and drop of a model version."""
    if fact.step == SwapStep.LOADED and fact.seconds is not None:
        MODEL_LOAD_DURATION.labels(fact.model).observe(fact.seconds)
    elif fact.step == SwapStep.LOAD_FAILED:
        MODEL_LOAD_FAILURES.labels(fact.model, "load").inc()
    elif fact.step == SwapStep.ACTIVATED and fact.version is not None:
        MODEL_ACTIVE_VERSION.labels(fact.model).set(fact.version)
        if fact.previous is not None:
            MODEL_SWAPS.labels(fact.model).inc()


def observe_validation_failure(model: str) -> None:
    """Called when a new version of ``model`` (``""`` if this process does not serve it) failed validation."""
    MODEL_LOAD_FAILURES.labels(model, "validation").inc()


def refresh() -> None:
    """Bring this process's metrics up to date; called before each scrape, from any thread.

    The observations waiting for :func:`flush` are flushed on the event loop
    that made them. In multiprocess mode the other processes' values are as
    of their last flush (at most ``FLUSH_INTERVAL_S`` old), and their queue
    depths as of their last model call, which is current enough: a queue that
    holds requests is being worked on.
    """
    _flush_where_observed()
    source = _serving_state
    if source is not None:
        for model in source():
            for version in model.versions:
                if version.loaded:
                    _batch_series_for(model.name, version.version)[3](version.queue_depth)


def _flush_where_observed(timeout_s: float = 1.0) -> None:
    loop = _pending.loop
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is None or loop is running or loop.is_closed() or not loop.is_running():
        flush()
        return
    done = threading.Event()

    def flush_there() -> None:
        try:
            flush()
        finally:
            done.set()

    try:
        loop.call_soon_threadsafe(flush_there)
    except RuntimeError:  # the loop closed meanwhile
        flush()
        return
    if not done.wait(timeout_s):
        logger.warning("The event loop did not flush the request metrics within %.1f s", timeout_s)


# -- installation ----------------------------------------------------------------------


async def shutdown() -> None:
    """Called when the server shuts down, after the connections were drained: the last numbers go out."""
    flush()
    if multiprocess_dir() is not None:
        mark_process_dead()


#: What the server serves right now (every version's queue depth), read at each scrape;
#: handed in by the composition root, since this module does not know the inference pool.
ServingState = Callable[[], Iterable["ModelState"]]
_serving_state: ServingState | None = None
_installed = False


def install(serving_state: ServingState | None = None) -> None:
    """Register the metric sinks on monitoring.events; ``serving_state`` is read before each scrape."""
    global _installed, _serving_state
    _serving_state = serving_state
    if _installed:
        return
    _check_mode()
    bulk_observe.check_internals()
    # _created series double the counters in the text format, and no query
    # of this project uses them.
    disable_created_metrics()
    events.on_prediction(observe_prediction)
    events.on_batch(observe_batch)
    events.on_in_flight_change(observe_in_flight)
    events.on_connection_change(WEBSOCKET_CONNECTIONS.inc)
    if multiprocess_dir() is not None:
        # For processes that never run the shutdown hooks (manage.py
        # commands, a server stopped without its signal handlers).
        atexit.register(mark_process_dead)
    _installed = True
