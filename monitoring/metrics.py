"""Prometheus metrics of the platform, all defined here at module level.

Names follow ``platform_<thing>_<unit|total>``; labels are bounded to model,
version and outcome, never a key, a client or a request id:

- ``model`` is the name of a model this process serves, or ``""`` for anything
  else (an unknown name, a frame that could not be parsed);
- ``version`` is a version number of that model, or ``""``;
- ``outcome`` is ``"ok"`` or one of the protocol's error codes.

Several processes: when ``PROMETHEUS_MULTIPROC_DIR`` is set, prometheus_client
keeps every process's values in files under that directory and ``/metrics``
adds them up (``monitoring.views``). prometheus_client reads the variable once,
when it is first imported, so it must be in the environment before the
process starts (``manage.py`` or daphne), never set from Python; the
directory must be empty when the first process starts, and shared by the
processes of one deployment only.
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    multiprocess,
    values,
)

from . import events

if TYPE_CHECKING:
    from inference.batching import BatchStats

logger = logging.getLogger(__name__)

NAMESPACE = "platform"

#: Every ``outcome`` label value: "ok" and the protocol's error codes.
OUTCOMES = frozenset({
    "ok", "invalid_json", "invalid_request", "invalid_input", "unknown_model",
    "model_unavailable", "overloaded", "rate_limited", "timeout", "internal",
})
#: The label value for a model or version that is not one this process serves.
NO_LABEL = ""

# Fine enough to tell a 1 ms reply from a 2 ms one, wide enough to reach the
# default request timeout (PLATFORM_REQUEST_TIMEOUT_MS, 5 s).
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Powers of two up to the largest request a client may send (PLATFORM_MAX_ROWS).
BATCH_SIZE_BUCKETS = tuple(float(2**n) for n in range(11))

# -- requests (one observation per answered request) ---------------------------------

REQUESTS = Counter(
    "requests", "Prediction requests answered, by outcome: ok or the protocol's error code.",
    ["model", "version", "outcome"], namespace=NAMESPACE,
)
ERRORS = Counter(
    "errors", "Prediction requests answered with an error, by the protocol's error code.",
    ["model", "version", "outcome"], namespace=NAMESPACE,
)
REQUEST_DURATION = Histogram(
    "request_duration_seconds",
    "Time from a request frame's arrival to its reply being handed to the socket.",
    ["model", "version", "outcome"], namespace=NAMESPACE, buckets=LATENCY_BUCKETS_S,
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

# -- the prediction-log writer (monitoring.recorder) --------------------------------

LOG_BUFFER_RECORDS = Gauge(
    "log_buffer_records", "Prediction records waiting in memory for the database.",
    namespace=NAMESPACE, multiprocess_mode="livesum",
)
LOG_SPILL_RECORDS = Gauge(
    "log_spill_records", "Prediction records in spill files waiting to be replayed into the database.",
    namespace=NAMESPACE, multiprocess_mode="livesum",
)
LOG_RECORDS_WRITTEN = Counter(
    "log_records_written", "Prediction records inserted into the database.", namespace=NAMESPACE,
)
LOG_RECORDS_SPILLED = Counter(
    "log_records_spilled",
    "Prediction records written to a spill file because the buffer was full or the database down.",
    namespace=NAMESPACE,
)
LOG_RECORDS_LOST = Counter(
    "log_records_lost", "Prediction records that could be kept neither in the database nor in a spill file.",
    namespace=NAMESPACE,
)
LOG_WRITE_ERRORS = Counter(
    "log_write_errors", "Failed attempts to insert a batch of prediction records.", namespace=NAMESPACE,
)


# -- labelled children, looked up once ------------------------------------------------
#
# ``labels()`` costs more than the observation itself, so each label
# combination's children are found once and kept, as bound methods, in a dict
# keyed by what the event carries. Only events whose model and version this
# process serves are kept under their own key; anything else is mapped to the
# bounded labels on every call, so a client sending made-up names can grow
# neither the Prometheus series nor these dicts.

Observe = Callable[[float], None]
Count = Callable[[], None]
RequestSeries = tuple[Count, Observe, Observe, Count | None]
BatchSeries = tuple[Observe, Observe, Callable[[float], None], Callable[[float], None]]

_request_series: dict[tuple[Any, Any, str], RequestSeries] = {}
_request_series_by_labels: dict[tuple[str, str, str], RequestSeries] = {}
_batch_series: dict[tuple[str, str], BatchSeries] = {}


def _service() -> Any:
    # Imported when first needed: inference.service reports to monitoring.events.
    from inference.service import get_service

    return get_service()


def bounded_labels(model: Any, version: Any) -> tuple[str, str]:
    """The ``model`` and ``version`` label values for what a request named."""
    service = _service()
    if not isinstance(model, str) or not service.has_model(model):
        return NO_LABEL, NO_LABEL
    if type(version) is not int:
        return model, NO_LABEL
    if any(entry.name == model and entry.version == version for entry in service.entries()):
        return model, str(version)
    return model, NO_LABEL


def _new_request_series(model: str, version: str, outcome: str) -> RequestSeries:
    key = (model, version, outcome)
    series = _request_series_by_labels.get(key)
    if series is None:
        errors = ERRORS.labels(model, version, outcome).inc if outcome != "ok" else None
        series = (
            REQUESTS.labels(model, version, outcome).inc,
            REQUEST_DURATION.labels(model, version, outcome).observe,
            QUEUE_WAIT.labels(model, version).observe,
            errors,
        )
        _request_series_by_labels[key] = series
    return series


def _request_series_for(model: Any, version: Any, outcome: str) -> RequestSeries:
    model_label, version_label = bounded_labels(model, version)
    # Codes come from the platform, not the client; an unexpected one is a bug
    # to be seen as an internal error, not a new series.
    outcome_label = outcome if outcome in OUTCOMES else "internal"
    series = _new_request_series(model_label, version_label, outcome_label)
    if model_label == model and (version is None or version_label == str(version)) and outcome_label == outcome:
        _request_series[(model, version, outcome)] = series
    return series


def _batch_series_for(model: str, version: int) -> BatchSeries:
    key = bounded_labels(model, version)
    series = _batch_series.get(key)
    if series is None:
        series = (
            BATCH_SIZE.labels(*key).observe,
            MODEL_CALL_DURATION.labels(*key).observe,
            ROWS.labels(*key).inc,
            QUEUE_DEPTH.labels(*key).set,
        )
        _batch_series[key] = series
    return series


# -- the sinks on monitoring.events --------------------------------------------------


def observe_prediction(event: events.PredictionEvent) -> None:
    """Called on the event loop for every answered request."""
    series = _request_series.get((event.model, event.version, event.outcome))
    if series is None:
        series = _request_series_for(event.model, event.version, event.outcome)
    count, observe_duration, observe_queue_wait, count_error = series
    count()
    if event.total_ms is not None:
        observe_duration(event.total_ms * 0.001)
    if event.queue_ms is not None:
        observe_queue_wait(event.queue_ms * 0.001)
    if count_error is not None:
        count_error()


def observe_batch(model: str, version: int, stats: BatchStats) -> None:
    """Called on the event loop after every model call, with its ``BatchStats``."""
    key = (model, str(version))
    series = _batch_series.get(key)
    if series is None:
        series = _batch_series_for(model, version)
    observe_size, observe_call, count_rows, set_queue_depth = series
    observe_size(stats.rows)
    observe_call(stats.inference_ms * 0.001)
    if not stats.failed:
        count_rows(stats.rows)
    set_queue_depth(_queue_depth(model, version))


def _queue_depth(model: str, version: int) -> int:
    from inference.exceptions import InferenceError

    try:
        batcher = _service().entry(model, version).batcher
    except InferenceError:  # unloaded since the call: nothing waits for it any more
        return 0
    return 0 if batcher is None else batcher.queue_depth


def refresh() -> None:
    """Bring the sampled gauges of this process up to date; called before each scrape.

    In multiprocess mode the other processes' queue depths stay as of their
    last model call, which is current enough: a queue that holds requests is
    being worked on.
    """
    for entry in _service().entries():
        if entry.batcher is not None:
            _batch_series_for(entry.name, entry.version)[3](entry.batcher.queue_depth)


# -- installation ----------------------------------------------------------------------


def multiprocess_dir() -> str | None:
    """The directory shared by the processes of this deployment, or None in single-process mode."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def _check_mode() -> None:
    configured = multiprocess_dir() is not None
    active = bool(getattr(values.ValueClass, "_multiprocess", False))
    if configured and not active:
        raise ImproperlyConfigured(
            "PROMETHEUS_MULTIPROC_DIR is set, but prometheus_client was imported before it was: "
            "set it in the environment before the process starts, not from Python."
        )
    if active and not configured:
        raise ImproperlyConfigured(
            "prometheus_client runs in multiprocess mode, but PROMETHEUS_MULTIPROC_DIR is no longer set: "
            "set it in the environment before the process starts and leave it there."
        )


def mark_process_dead() -> None:
    """Drop this process's live gauges from the multiprocess directory; its counters stay in the totals."""
    path = multiprocess_dir()
    if path is not None and os.path.isdir(path):
        multiprocess.mark_process_dead(os.getpid(), path)


async def _mark_process_dead_on_shutdown() -> None:
    """Called when the server shuts down, after the connections were drained."""
    mark_process_dead()


_installed = {"done": False}


def install() -> None:
    """Register the metric sinks on monitoring.events."""
    if _installed["done"]:
        return
    _check_mode()
    # _created series double the counters in the text format, and no query
    # of this project uses them.
    disable_created_metrics()
    events.on_prediction(observe_prediction)
    events.on_batch(observe_batch)
    events.on_in_flight_change(REQUESTS_IN_FLIGHT.inc)
    events.on_connection_change(WEBSOCKET_CONNECTIONS.inc)
    if multiprocess_dir() is not None:
        from platform_core.lifecycle import on_shutdown

        on_shutdown(_mark_process_dead_on_shutdown, order=90)
        # Also for processes that never run the shutdown hooks (manage.py
        # commands, a server stopped without its signal handlers).
        atexit.register(mark_process_dead)
    _installed["done"] = True
