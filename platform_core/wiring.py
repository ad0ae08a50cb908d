"""The composition root: what connects the apps, which do not import one another upward.

``inference`` reports its model calls and its model swaps to whoever
observes them, ``monitoring`` listens to the serving events and reads what
the pool serves through callables handed to it here, and the shutdown hooks
run in the order given here: new WebSocket connections are refused, the
process stops following the registry, connections drain, then the prediction log writes what it holds, then the
metrics flush (the log's own gauges and counters included).

A change to the registry (``inference.signals.catalog_changed``) reaches
every server process through ``platform_core.modelsync``; each process's pool
swaps versions and tells its open connections (``streaming.catalog_push``)
and the metrics.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from django.conf import settings

from frontend.consumers import close_dashboards
from inference import service as inference_service
from inference import swaps
from inference.rollout import shadow as rollout_shadow
from inference.served import NO_LABEL, ModelState
from inference.signals import catalog_changed
from monitoring import comparisons, events, livestats, metrics, predictionlog
from platform_core import modelsync
from platform_core.lifecycle import before_send, on_shutdown
from streaming.catalog_push import push_catalog
from streaming.draining import drain_connections, refuse_new_connections

logger = logging.getLogger(__name__)

MODEL_SYNC_ORDER, DRAIN_ORDER, PREDICTION_LOG_ORDER, METRICS_ORDER = 5, 10, 50, 80
#: First of all, with the server's listening ports closing: no new WebSocket connection is served.
REFUSE_ORDER = 0
#: After the connections drained (no more shadow copies), before the metrics flush.
COMPARISONS_ORDER = 45
#: The ``action`` of ``catalog_changed`` for a version that failed validation.
VALIDATION_FAILED = "failed"


def serving_state() -> list[ModelState]:
    """What this process's inference pool serves right now (read at each scrape and dashboard snapshot)."""
    return inference_service.get_service().snapshot()


def connect() -> None:
    """Wire the apps together; called once, when Django's app registry is ready."""
    on_shutdown(refuse_new_connections, order=REFUSE_ORDER)
    on_shutdown(modelsync.stop, order=MODEL_SYNC_ORDER)
    on_shutdown(drain_connections, order=DRAIN_ORDER)
    on_shutdown(close_dashboards, order=DRAIN_ORDER)  # once the prediction streams drained: dashboards show it
    catalog_changed.connect(modelsync.announce, dispatch_uid="platform_core.modelsync.announce")
    swaps.observe_catalog(push_catalog)
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
    swaps.observe_swaps(metrics.observe_swap)
    # The shadow versions' comparisons, and the guard that aborts a failing canary (docs/rollout.md).
    rollout_shadow.observe_shadows(comparisons.observe)
    comparisons.install(lambda model: inference_service.get_service().rollout(model))
    on_shutdown(comparisons.shutdown, order=COMPARISONS_ORDER)
    catalog_changed.connect(_count_validation_failure, dispatch_uid="platform_core.wiring.validation_failures")


def _count_validation_failure(sender: Any = None, *, model: str = "", action: str = "", **kwargs: Any) -> None:
    """Receiver of ``catalog_changed``: a version refused by validation counts as a failed load."""
    if action == VALIDATION_FAILED:
        served = inference_service.get_service().has_model(model)
        metrics.observe_validation_failure(model if served else NO_LABEL)


def start_serving() -> None:
    """Called once the server process has loaded its models, before it accepts connections.

    The prediction log starts at once, so that what a previous process left
    (its journal, spill files) reaches the database without waiting for traffic;
    the process follows the registry once the server runs.
    """
    if settings.PLATFORM_MONITORING and settings.PLATFORM_LOG_ENABLED:
        predictionlog.get_log().start()
    interval_s = settings.PLATFORM_MODEL_RECONCILE_S
    _once_serving(lambda: modelsync.start(inference_service.get_service().reconcile, interval_s))


def _once_serving(start: Callable[[], object]) -> None:
    """Run ``start`` on the event loop once the server runs.

    daphne installs Twisted's asyncio reactor before it imports the
    application and runs it afterwards: a call scheduled on the reactor now
    runs on its event loop once it turns (its startup triggers would be too
    early: they fire before the loop runs). A process that imports the
    application without serving it (a ``manage.py`` command, the tests) never
    runs the reactor, and starts nothing.
    """
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None:
        return

    def start_logged() -> None:
        try:
            start()
        except Exception:  # Twisted's own log goes nowhere under daphne
            logger.exception("Could not start %r", start)

    reactor.callLater(0, start_logged)
