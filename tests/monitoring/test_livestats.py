"""The per-process aggregator: what its snapshots say, what a sink costs, how often one goes out."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from channels.layers import get_channel_layer

from inference.batching import BatchStats
from monitoring import events
from monitoring import livestats as stats
from monitoring.livestats import DASHBOARD_GROUP, RECENT_PER_SECOND, SHORT_CHARS, SNAPSHOT_TYPE, StatsAggregator
from tests.monitoring.livestats_fixtures import prediction


def test_the_app_registers_the_sinks_and_enables_the_aggregator():
    assert stats.aggregator.enabled
    assert stats.aggregator.observe_prediction in events._prediction_sinks
    assert stats.aggregator.observe_connection in events._connection_sinks
    assert stats.aggregator.observe_in_flight in events._in_flight_sinks
    assert stats.aggregator.observe_batch in events._batch_sinks


def test_counts_predictions_rows_and_errors_per_model(aggregator):
    for _ in range(3):
        events.prediction(prediction("iris", rows=2))
    events.prediction(prediction("wine", rows=5))
    events.prediction(prediction("iris", "invalid_input"))
    events.prediction(prediction("no-such-model", "unknown_model"))
    events.prediction(prediction(None, "invalid_json", rows=0))

    snapshot = aggregator.snapshot()

    assert snapshot["models"]["iris"]["totals"] == {"predictions": 3, "rows": 6, "errors": 1}
    assert snapshot["models"]["wine"]["totals"] == {"predictions": 1, "rows": 5, "errors": 0}
    assert set(snapshot["models"]) == {"iris", "wine"}, "a made-up model name got a row of its own"
    assert snapshot["totals"]["predictions"] == 4
    assert snapshot["totals"]["rows"] == 11
    assert snapshot["totals"]["errors"] == 3
    assert snapshot["totals"]["errors_by_code"] == {"invalid_input": 1, "unknown_model": 1, "invalid_json": 1}
    assert snapshot["window"]["predictions"] == 4
    assert snapshot["window"]["errors_by_code"] == {"invalid_input": 1, "unknown_model": 1, "invalid_json": 1}

    events.prediction(prediction("iris"))
    following = aggregator.snapshot()

    assert following["window"]["predictions"] == 1
    assert following["window"]["errors"] == 0
    assert following["window"]["errors_by_code"] == {}
    assert following["models"]["iris"]["window"] == {"predictions": 1, "rows": 1, "errors": 0}
    assert following["models"]["wine"]["window"] == {"predictions": 0, "rows": 0, "errors": 0}
    assert following["totals"]["predictions"] == 5


def test_models_show_their_active_version_and_queues(aggregator, served_models):
    snapshot = aggregator.snapshot()

    iris = snapshot["models"]["iris"]
    assert iris["active_version"] == 2
    assert iris["loaded_versions"] == [1, 2]
    assert iris["queue_depth"] == 0 and iris["computing_rows"] == 0
    assert snapshot["models"]["wine"]["active_version"] == 1


def test_percentiles_of_one_second(aggregator):
    for ms in range(1, 101):
        events.prediction(prediction(total_ms=float(ms)))
    events.prediction(prediction(outcome="invalid_input", total_ms=5000.0))

    latency = aggregator.snapshot()["window"]["latency_ms"]

    assert latency["count"] == 100, "an error's latency was counted with the predictions"
    assert latency["p50"] == pytest.approx(50.5)
    assert latency["p95"] == pytest.approx(95.05)
    assert latency["p99"] == pytest.approx(99.01)
    assert latency["max"] == 100.0
    assert len(latency["quantiles"]) == stats.LATENCY_QUANTILES
    assert latency["quantiles"] == sorted(latency["quantiles"])

    assert aggregator.snapshot()["window"]["latency_ms"]["p50"] is None, "the next second starts empty"


def test_latencies_kept_a_second_are_bounded_but_every_request_counts(served_models):
    aggregator = StatsAggregator(latency_sample_limit=200)
    for i in range(20_000):
        aggregator.observe_prediction(prediction(total_ms=float(i % 100 + 1)))

    assert len(aggregator._latencies) == 200
    latency = aggregator.snapshot()["window"]["latency_ms"]
    assert latency["count"] == 20_000
    # A uniform sample of 1..100 ms: its median is near the middle, not the first values seen.
    assert 35 <= latency["p50"] <= 65


def test_the_feed_keeps_a_few_predictions_and_errors_a_second(aggregator):
    for i in range(1000):
        events.prediction(prediction(request_id=f"r-{i}"))
    events.prediction(prediction(outcome="invalid_input"))
    recent = aggregator.snapshot()["recent"]
    assert len(recent) == RECENT_PER_SECOND + 1
    assert [item["outcome"] for item in recent].count("invalid_input") == 1, "an error was crowded out"

    for i in range(2):
        events.prediction(prediction(request_id=f"s-{i}"))
    assert len(aggregator.snapshot()["recent"]) == 2
    assert aggregator.snapshot()["recent"] == []


def test_feed_items_are_shortened_when_published(aggregator):
    wide = [[0.123456789] * 64] * 1024
    events.prediction(prediction("wine", rows=1024, inputs=wide, outputs=[{"value": 151.9873}] * 1024))
    events.prediction(prediction("iris"))
    events.prediction(prediction("iris", "invalid_input"))

    big, classified, refused = aggregator.snapshot()["recent"]

    assert big["inputs"].startswith("[0.1235, 0.1235")
    assert big["inputs"].endswith("(+1023 more)")
    assert len(big["inputs"]) <= SHORT_CHARS + 20
    assert big["outputs"] == "152 (+1023 more)"
    assert big["rows"] == 1024 and big["model"] == "wine"
    assert classified["outputs"] == "setosa (0.97)"
    assert classified["inputs"] == "[5.1, 3.5, 1.4, 0.2]"
    assert refused["outcome"] == "invalid_input"
    assert refused["outputs"] == "row 0: expected 4 features, got 3"
    assert classified["process"] == aggregator.process_id


async def test_integers_no_float_can_hold_never_stop_the_statistics(aggregator):
    """A client's 401-digit (or 5,000-digit) integer is refused as invalid_input, and still published."""
    for digits in (401, 5000):
        huge = 10 ** (digits - 1)
        events.prediction(prediction("iris", "invalid_input", inputs=[[huge, 1, 2, -huge]]))
    layer = get_channel_layer()
    await layer.group_add(DASHBOARD_GROUP, "test-reader")
    assert await aggregator.publish(layer)
    message = await asyncio.wait_for(layer.receive("test-reader"), 2)
    feed = [item["inputs"] for item in message["snapshot"]["recent"]]
    assert feed == ["[<401-digit integer>, 1, 2, -<401-digit integer>]",
                    "[<5000-digit integer>, 1, 2, -<5000-digit integer>]"]
    assert message["snapshot"]["totals"]["errors_by_code"] == {"invalid_input": 2}


def test_batch_sizes_in_power_of_two_buckets(aggregator):
    for rows in (1, 2, 3, 4, 7, 8, 256, 1024, 5000):
        events.batch("iris", 2, BatchStats(rows=rows, requests=1, inference_ms=1.0, failed=False))

    snapshot = aggregator.snapshot()

    assert snapshot["totals"]["batch_sizes"] == [1, 2, 2, 1, 0, 0, 0, 0, 1, 0, 2]
    assert snapshot["window"]["batches"] == 9
    assert stats.BATCH_BUCKET_LABELS[8] == "256–511"
    assert stats.BATCH_BUCKET_LABELS[10] == "1024+"
    assert aggregator.snapshot()["window"]["batch_sizes"] == [0] * stats.BATCH_BUCKETS


def test_connections_and_requests_in_flight(aggregator):
    for delta in (+1, +1, +1, -1):
        events.connection_change(delta)
    events.connection_change(+1)
    aggregator.dashboard_opened()
    for delta in (+1, +1, +1, -1, -1):
        events.in_flight_change(delta)

    snapshot = aggregator.snapshot()

    assert snapshot["connections"] == 2, "the dashboard's own connection was counted as a prediction client"
    assert snapshot["dashboards"] == 1
    assert snapshot["in_flight"] == 1
    assert snapshot["in_flight_peak"] == 3
    assert aggregator.snapshot()["in_flight_peak"] == 1


async def test_the_publisher_starts_with_the_first_event(aggregator):
    assert aggregator._publisher is None, "the publisher ran before anything happened"
    events.prediction(prediction())
    assert aggregator._publisher is not None and not aggregator._publisher.done()


async def test_a_process_without_its_sinks_publishes_nothing(served_models):
    disabled = StatsAggregator(enabled=False)
    disabled.observe_prediction(prediction())
    disabled.dashboard_opened()
    assert disabled._publisher is None


async def test_one_message_a_second_whatever_the_traffic(aggregator):
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(DASHBOARD_GROUP, channel)
    sent = 0
    started = time.monotonic()
    while time.monotonic() - started < 3.2:
        for _ in range(200):
            events.prediction(prediction())
        sent += 200
        await asyncio.sleep(0.01)

    messages = []
    while True:
        try:
            messages.append(await asyncio.wait_for(layer.receive(channel), 0.1))
        except TimeoutError:
            break
    await layer.group_discard(DASHBOARD_GROUP, channel)

    assert 2 <= len(messages) <= 4, f"{len(messages)} messages in 3.2 s for {sent} predictions"
    assert {message["type"] for message in messages} == {SNAPSHOT_TYPE}
    snapshots = [message["snapshot"] for message in messages]
    times = [snapshot["time"] for snapshot in snapshots]
    assert all(0.8 < later - earlier < 1.2 for earlier, later in zip(times, times[1:], strict=False))
    assert sum(s["window"]["predictions"] for s in snapshots) == snapshots[-1]["totals"]["predictions"]
    assert snapshots[-1]["totals"]["predictions"] <= sent


class FlakyLayer:
    """A channel layer whose first group_sends fail."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[dict] = []

    async def group_send(self, group, message):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("Redis is down")
        self.sent.append(message)


async def test_a_failing_channel_layer_never_stops_the_publisher(aggregator, monkeypatch, caplog):
    layer = FlakyLayer(failures=3)
    monkeypatch.setattr("channels.layers.get_channel_layer", lambda *args: layer)
    aggregator.interval_s = 0.05
    caplog.set_level(logging.WARNING, logger="monitoring.livestats.aggregator")

    aggregator.ensure_publishing()
    await asyncio.sleep(0.5)

    assert not aggregator._publisher.done()
    assert len(layer.sent) >= 3
    warnings = [record for record in caplog.records if "Could not publish" in record.message]
    assert len(warnings) == 1, "every failure was logged, not the first one"


async def test_a_stop_that_arrives_as_a_snapshot_goes_out_stops_the_publisher(aggregator, monkeypatch):
    class CancelledOnSend:
        sends = 0

        async def group_send(self, group, message):
            # The stop arrives while the send completes: a cancellation that
            # asyncio.wait_for on Python 3.11 would swallow.
            self.sends += 1
            aggregator._publisher.cancel()

    layer = CancelledOnSend()
    monkeypatch.setattr("channels.layers.get_channel_layer", lambda *args: layer)
    aggregator.interval_s = 0.01
    aggregator.ensure_publishing()
    publisher = aggregator._publisher

    done, _ = await asyncio.wait([publisher], timeout=2)

    assert done == {publisher}, f"the publisher went on after its cancellation ({layer.sends} sends)"
    assert publisher.cancelled()
    assert layer.sends == 1


async def test_a_sink_costs_a_few_microseconds(aggregator):
    # Measured on the loop with the publisher running, as in a server.
    many = [prediction(request_id=f"r-{i}", rows=2) for i in range(1000)]
    events.prediction(many[0])
    rounds = 100
    started = time.perf_counter()
    for _ in range(rounds):
        for event in many:
            aggregator.observe_prediction(event)
    per_event_s = (time.perf_counter() - started) / (rounds * len(many))

    assert per_event_s < 10e-6, f"observe_prediction took {per_event_s * 1e6:.2f} µs per event"
