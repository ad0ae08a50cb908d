"""The composition root: what connects the apps, which do not import one another upward.

``inference`` reports its model calls to whoever observes them, ``monitoring``
listens to the serving events and reads what the pool serves through
callables handed to it here, and the shutdown hooks run in the order given
here: connections drain first, then the prediction log writes what it holds,
then the metrics flush (the log's own gauges and counters included).
"""

from __future__ import annotations

from django.conf import settings

from inference import service as inference_service
from inference.served import ModelState
from monitoring import events, livestats, metrics, predictionlog
from platform_core.lifecycle import before_send, on_shutdown
from streaming.draining import drain_connections

DRAIN_ORDER, PREDICTION_LOG_ORDER, METRICS_ORDER = 10, 50, 80


def serving_state() -> list[ModelState]:
    """What this process's inference pool serves right now (read at each scrape and dashboard snapshot)."""
    return inference_service.get_service().snapshot()


def connect() -> None:
    """Wire the apps together; called once, when Django's app registry is ready."""
    on_shutdown(drain_connections, order=DRAIN_ORDER)
    # The switch that turns monitoring off (to measure what it costs) turns
    # off the metrics, the prediction log and the dashboard's statistics.
    if not settings.PLATFORM_MONITORING:
        return
    inference_service.observe_batches(events.batch)
    metrics.install(serving_state)
    on_shutdown(metrics.shutdown, order=METRICS_ORDER)
    predictionlog.install()
    on_shutdown(predictionlog.shutdown, order=PREDICTION_LOG_ORDER)
    # No reply leaves before its record is in the journal.
    before_send(predictionlog.write_journal)
    livestats.install(serving_state)


def start_serving() -> None:
    """Called once the server process has loaded its models, before it accepts connections.

    The prediction log starts at once, so that what a previous process left
    (its journal, spill files) reaches the database without waiting for traffic.
    """
    if settings.PLATFORM_MONITORING and settings.PLATFORM_LOG_ENABLED:
        predictionlog.get_log().start()
