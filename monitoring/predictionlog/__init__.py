"""The prediction log: every answered request becomes a ``PredictionRecord``, off the serving path.

The sink runs on the event loop once per request and only appends the
request's row to an in-memory buffer; a writer thread inserts the buffer in
batches, by default through a writer process of its own. When the database
is down, locked or slow, replies keep flowing: the writer retries with
backoff while the records that do not fit in memory go to spill files,
replayed into the database once it answers again, including the files a
process that died left behind. Each record carries an id given before it is
written anywhere, so a retry or a replay never writes it twice; whatever can
be kept neither in the database nor on disk is counted in
``platform_log_records_lost_total`` and logged.

A module per job:

- ``log``: :class:`PredictionLog`, the bounded buffer, its writer and spill threads, its gauges;
- ``database``: the writer's attempts, their backoff, and the replay of spill files;
- ``inserter``: multi-row ``INSERT`` statements, and ``RowInserter``, what every inserter offers;
- ``writer_process``: the child process that runs the inserts off the server's interpreter;
- ``spill``: the spill files and the way through them;
- ``journal``: each record on disk before its reply leaves, and what a dead process's journal held;
- ``losses``: counting and logging what could be kept nowhere;
- ``rows``: the row format (:class:`Row`, ``COLUMNS``) and spill-file lines;
- ``columns``: the widths of the text columns, which ``monitoring.models`` declares too;
- ``exceptions``: the errors of the spill files.

:func:`install` registers the sink; the server's composition root runs
:func:`shutdown` among its shutdown hooks, and processes that never run those
(``runserver``, scripts) stop the log at exit.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.signals import request_started

from .. import events
from .exceptions import SpillFileError, SpillReplayError
from .rows import COLUMNS, Row

if TYPE_CHECKING:
    from .log import PredictionLog

__all__ = [
    "COLUMNS", "PredictionLog", "Row", "SpillFileError", "SpillReplayError", "flush", "get_log", "install",
    "shutdown", "write_journal",
]

_log: PredictionLog | None = None
_log_lock = threading.Lock()
_installed = False


def __getattr__(name: str) -> Any:
    # The writer process imports this package too (python -m
    # monitoring.predictionlog.writer_process), before Django is configured and
    # without Prometheus's metrics: the log is imported when first asked for.
    if name == "PredictionLog":
        from .log import PredictionLog

        return PredictionLog
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_log() -> PredictionLog:
    """The prediction log of this process, configured from settings on first use."""
    global _log
    if _log is None:
        with _log_lock:
            if _log is None:
                from .log import PredictionLog

                _log = PredictionLog.from_settings()
    return _log


def flush(timeout_s: float = 10.0) -> bool:
    """Write every record received so far to the database; False if that did not happen within ``timeout_s``."""
    return get_log().flush(timeout_s)


def write_journal() -> None:
    """Write the records the journal holds for the next write; the server calls it before it sends replies."""
    log = _log
    if log is not None and log.journal is not None:
        log.journal.write_pending()


async def shutdown() -> None:
    """Called when the server shuts down, after the connections were drained: write or spill what is in memory."""
    if _log is not None:
        await asyncio.to_thread(_log.stop)


def install() -> None:
    """Register the prediction-log sink on monitoring.events; no thread starts before the first event."""
    global _installed
    if _installed or not settings.PLATFORM_LOG_ENABLED:
        return
    _installed = True
    events.on_prediction(get_log().record)
    request_started.connect(_start_serving, dispatch_uid="monitoring.predictionlog")
    atexit.register(_stop_at_exit)


def _start_serving(**kwargs: Any) -> None:
    """Called on every HTTP request: a serving process replays spill files without waiting for traffic."""
    if _log is not None:
        _log.start()


def _stop_at_exit() -> None:
    # For processes that never run the shutdown hooks (runserver, scripts).
    if _log is not None:
        _log.stop()
