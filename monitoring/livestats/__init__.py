"""Live statistics: each process's numbers, published on the channel layer once a second for the dashboard."""

from monitoring import events

from .aggregator import (
    BATCH_BUCKET_LABELS,
    BATCH_BUCKETS,
    DASHBOARD_GROUP,
    RECENT_PER_SECOND,
    SNAPSHOT_TYPE,
    ServingState,
    StatsAggregator,
)
from .latency import LATENCY_QUANTILES, latency_summary
from .shorten import SHORT_CHARS, shorten, shorten_outputs, shorten_row, shorten_rows

#: This process's aggregator; ``install()`` registers its sinks and enables it.
aggregator = StatsAggregator(enabled=False)


def install(serving_state: ServingState | None = None) -> None:
    """Register the aggregator's sinks on monitoring.events (once; registering twice is a no-op).

    ``serving_state`` tells, once a second, what the server serves: active
    versions, queues, model calls.
    """
    aggregator.enabled = True
    aggregator.serving_state = serving_state
    events.on_prediction(aggregator.observe_prediction)
    events.on_connection_change(aggregator.observe_connection)
    events.on_in_flight_change(aggregator.observe_in_flight)
    events.on_batch(aggregator.observe_batch)


__all__ = [
    "BATCH_BUCKETS", "BATCH_BUCKET_LABELS", "DASHBOARD_GROUP", "LATENCY_QUANTILES", "RECENT_PER_SECOND",
    "SHORT_CHARS", "SNAPSHOT_TYPE", "ServingState", "StatsAggregator", "aggregator", "install",
    "latency_summary", "shorten", "shorten_outputs", "shorten_row", "shorten_rows",
]
