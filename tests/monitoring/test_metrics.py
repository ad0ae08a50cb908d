"""The metric sinks on monitoring.events, and the /metrics view, in this process."""

from __future__ import annotations

import gzip
from typing import Self

import numpy as np
import pytest
from django.core.exceptions import ImproperlyConfigured
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from inference.batching import BatchStats
from inference.service import get_service
from monitoring import events, metrics
from monitoring.events import PredictionEvent
from tests.monitoring.metrics_support import metric_sinks_only, served_models, value  # noqa: F401

pytestmark = pytest.mark.usefixtures("served_models", "metric_sinks_only")


def sample(name: str, **labels: str) -> float:
    """A sample's value as a scrape would see it: the observations waiting in memory are flushed first."""
    metrics.refresh()
    return REGISTRY.get_sample_value(name, labels) or 0.0


def prediction(model: str | None = "iris", version: int | None = 1, outcome: str = "ok", *,
               total_ms: float | None = 1.5, queue_ms: float | None = 0.3) -> PredictionEvent:
    """An event as the consumer makes it, its labels bounded by the served models."""
    if outcome != "ok":
        queue_ms = None
    return PredictionEvent(
        received_at=0.0, model=model, version=version, api_key="key-name", request_id="request-17", rows=1,
        inputs=[[1.0, 2.0, 3.0, 4.0]], outputs=None, outcome=outcome, queue_ms=queue_ms,
        inference_ms=0.1 if outcome == "ok" else None, total_ms=total_ms,
        labels=get_service().labels(model, version),
    )


class Delta:
    """Sample values before and after a block, for metrics other tests also move."""

    def __init__(self, *series: tuple[str, dict[str, str]]) -> None:
        self.series = series

    def __enter__(self) -> Self:
        self.before = [sample(name, **labels) for name, labels in self.series]
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.changes = [sample(name, **labels) - before
                        for (name, labels), before in zip(self.series, self.before, strict=True)]


def series_labels(name: str) -> list[dict[str, str]]:
    return [s.labels for family in REGISTRY.collect() for s in family.samples if s.name == name]


IRIS_1_OK = {"model": "iris", "version": "1", "outcome": "ok", "protocol": "websocket"}
IRIS_1 = {"model": "iris", "version": "1"}


def test_the_app_registers_the_sinks():
    assert metrics.observe_prediction in events._prediction_sinks
    assert metrics.observe_batch in events._batch_sinks
    assert metrics.observe_in_flight in events._in_flight_sinks
    assert metrics.WEBSOCKET_CONNECTIONS.inc in events._connection_sinks


def test_requests_are_counted_by_model_version_and_outcome():
    invalid = {"model": "iris", "version": "1", "outcome": "invalid_input", "protocol": "websocket"}
    with Delta(("platform_requests_total", IRIS_1_OK), ("platform_requests_total", invalid),
               ("platform_errors_total", IRIS_1_OK), ("platform_errors_total", invalid),
               ("platform_requests_total", {**IRIS_1_OK, "version": "2"})) as delta:
        for _ in range(3):
            events.prediction(prediction())
        for _ in range(2):
            events.prediction(prediction(outcome="invalid_input"))
    assert delta.changes == [3, 2, 0, 2, 0]


def test_end_to_end_latency_is_observed_for_every_outcome_and_queue_wait_for_served_requests():
    timeout = {"model": "iris", "version": "1", "outcome": "timeout", "protocol": "websocket"}
    with Delta(("platform_request_duration_seconds_count", IRIS_1_OK),
               ("platform_request_duration_seconds_count", timeout),
               ("platform_request_duration_seconds_sum", timeout),
               ("platform_queue_wait_seconds_count", IRIS_1),
               ("platform_queue_wait_seconds_sum", IRIS_1)) as delta:
        events.prediction(prediction(total_ms=2.0, queue_ms=0.5))
        events.prediction(prediction(outcome="timeout", total_ms=5004.0))
    assert delta.changes == pytest.approx([1, 1, 5.004, 1, 0.0005])


def test_latency_buckets_resolve_milliseconds():
    def bucket(le: str) -> tuple[str, dict[str, str]]:
        return "platform_request_duration_seconds_bucket", {**IRIS_1_OK, "le": le}

    with Delta(bucket("0.001"), bucket("0.002"), bucket("0.005"), bucket("+Inf")) as delta:
        events.prediction(prediction(total_ms=1.5))
        events.prediction(prediction(total_ms=4.0))
    assert delta.changes == [0, 1, 2, 2]


def test_unknown_models_and_versions_share_bounded_labels():
    unknown_model = {"model": "", "version": "", "outcome": "unknown_model", "protocol": "websocket"}
    unknown_version = {"model": "iris", "version": "", "outcome": "unknown_model", "protocol": "websocket"}
    unparsable = {"model": "", "version": "", "outcome": "invalid_json", "protocol": "websocket"}
    with Delta(("platform_requests_total", unknown_model), ("platform_requests_total", unknown_version),
               ("platform_requests_total", unparsable)) as delta:
        for n in range(50):
            events.prediction(prediction(model=f"made-up-{n}", version=n, outcome="unknown_model"))
            events.prediction(prediction(model="iris", version=1000 + n, outcome="unknown_model"))
        events.prediction(prediction(model=None, version=None, outcome="invalid_json"))
    assert delta.changes == [50, 50, 1]
    models = {labels["model"] for labels in series_labels("platform_requests_total")}
    versions = {labels["version"] for labels in series_labels("platform_requests_total")}
    assert not any(model.startswith("made-up") for model in models)
    assert versions <= {"", "1", "2"}
    # Nor do made-up names grow the label caches.
    assert not any(str(key[0]).startswith("made-up") or key[1] not in (None, 1, 2)
                   for key in metrics._request_series)


def test_a_request_without_a_version_has_an_empty_version_label():
    labels = {"model": "wine", "version": "", "outcome": "invalid_input", "protocol": "websocket"}
    with Delta(("platform_requests_total", labels)) as delta:
        events.prediction(prediction(model="wine", version=None, outcome="invalid_input"))
    assert delta.changes == [1]


def test_an_outcome_outside_the_protocol_is_counted_as_internal():
    with Delta(("platform_requests_total", {**IRIS_1_OK, "outcome": "internal", "protocol": "websocket"})) as delta:
        events.prediction(prediction(outcome="something-new"))
    assert delta.changes == [1]
    assert "something-new" not in {labels["outcome"] for labels in series_labels("platform_requests_total")}


def test_requests_are_counted_by_the_protocol_they_came_by():
    by_protocol = [("platform_requests_total", {**IRIS_1_OK, "protocol": protocol})
                   for protocol in ("websocket", "http", "grpc")]
    with Delta(*by_protocol, ("platform_request_duration_seconds_count", {**IRIS_1_OK, "protocol": "grpc"})) as delta:
        for protocol, times in (("websocket", 1), ("http", 2), ("grpc", 3)):
            for _ in range(times):
                event = prediction()
                event.protocol = protocol
                events.prediction(event)
        # A value the platform never sends is no new series.
        odd = prediction()
        odd.protocol = "carrier-pigeon"
        events.prediction(odd)
    assert delta.changes == [2, 2, 3, 3]
    assert {labels["protocol"] for labels in series_labels("platform_requests_total")} <= {"websocket", "http", "grpc"}


def test_after_the_first_event_the_hot_path_looks_up_no_labels(monkeypatch):
    events.prediction(prediction())
    events.prediction(prediction(outcome="overloaded"))
    events.batch("iris", 1, BatchStats(rows=4, requests=2, inference_ms=0.2, failed=False))
    metrics.refresh()  # a scrape: the queue-depth series of every served version

    def no_lookup(*args, **kwargs):
        raise AssertionError("labels() was called on the hot path")

    monkeypatch.setattr(MetricWrapperBase, "labels", no_lookup)
    with Delta(("platform_requests_total", IRIS_1_OK), ("platform_batch_size_rows_count", IRIS_1)) as delta:
        events.prediction(prediction())
        events.prediction(prediction(outcome="overloaded"))
        events.batch("iris", 1, BatchStats(rows=4, requests=2, inference_ms=0.2, failed=False))
    assert delta.changes == [1, 1]


def test_each_model_call_observes_batch_size_call_time_and_rows():
    def batch_bucket(le: str) -> tuple[str, dict[str, str]]:
        return "platform_batch_size_rows_bucket", {**IRIS_1, "le": le}

    with Delta(batch_bucket("4.0"), batch_bucket("8.0"), ("platform_batch_size_rows_count", IRIS_1),
               ("platform_model_call_duration_seconds_count", IRIS_1),
               ("platform_model_call_duration_seconds_sum", IRIS_1),
               ("platform_rows_total", IRIS_1)) as delta:
        events.batch("iris", 1, BatchStats(rows=7, requests=3, inference_ms=0.8, failed=False))
        events.batch("iris", 1, BatchStats(rows=3, requests=1, inference_ms=0.2, failed=True))
    # A failed call is a model call of that size, but served no rows.
    assert delta.changes == pytest.approx([1, 2, 2, 2, 0.001, 7])


def test_a_model_call_on_the_event_loop_is_counted_as_inline():
    with Delta(("platform_model_calls_inline_total", IRIS_1),
               ("platform_model_call_duration_seconds_count", IRIS_1)) as delta:
        events.batch("iris", 1, BatchStats(rows=2, requests=2, inference_ms=0.2, failed=False, inline=True))
        events.batch("iris", 1, BatchStats(rows=2, requests=2, inference_ms=0.2, failed=False))
    assert delta.changes == [1, 2]


async def test_queue_depth_is_set_at_each_model_call_and_at_each_scrape(served_models):  # noqa: F811
    entry = served_models.entry("iris", 1)
    for _ in range(3):
        # The batcher's worker cannot run until this coroutine yields.
        entry.batcher.submit(np.ones((1, 4)), timeout_s=5)
    events.batch("iris", 1, BatchStats(rows=1, requests=1, inference_ms=0.1, failed=False))
    assert sample("platform_queue_depth_requests", **IRIS_1) == 3
    entry.batcher.submit(np.ones((1, 4)), timeout_s=5)
    metrics.refresh()
    assert sample("platform_queue_depth_requests", **IRIS_1) == 4
    await entry.batcher.close()
    metrics.refresh()
    assert sample("platform_queue_depth_requests", **IRIS_1) == 0


def test_connections_and_requests_in_flight_follow_the_events():
    with Delta(("platform_websocket_connections", {}), ("platform_requests_in_flight", {})) as delta:
        events.connection_change(+1)
        events.connection_change(+1)
        events.connection_change(-1)
        for _ in range(5):
            events.in_flight_change(+1)
        events.in_flight_change(-1)
    assert delta.changes == [1, 4]
    events.connection_change(-1)
    for _ in range(4):
        events.in_flight_change(-1)


# -- observations flushed in bulk ---------------------------------------------------------


def test_bulk_observations_expose_exactly_what_one_observe_each_would():
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    amounts_ms = [0.0, 0.5, 0.50001, 1.0, 1.5, 2.0, 4.999, 5.0, 5.001, 99.0, 250.0, 4999.0, 5000.0, 5001.0, 1e9]
    amounts_ms += list(np.random.default_rng(7).exponential(20.0, 5000))
    one_by_one, in_bulk = CollectorRegistry(), CollectorRegistry()
    kwargs = {"buckets": metrics.LATENCY_BUCKETS_S, "labelnames": ["model"]}
    each = Histogram("latency_seconds", "x", registry=one_by_one, **kwargs).labels("m")
    bulk = Histogram("latency_seconds", "x", registry=in_bulk, **kwargs).labels("m")
    for amount in amounts_ms:
        each.observe(amount * 0.001)
    metrics.observe_many(bulk, amounts_ms, 0.001)

    def exposition(registry):
        lines = generate_latest(registry).decode().splitlines()
        return [line for line in lines if "_sum" not in line], next(
            float(line.split()[-1]) for line in lines if line.startswith("latency_seconds_sum"))

    (each_lines, each_sum), (bulk_lines, bulk_sum) = exposition(one_by_one), exposition(in_bulk)
    assert bulk_lines == each_lines
    assert 'latency_seconds_count{model="m"} 5015.0' in bulk_lines
    assert bulk_sum == pytest.approx(each_sum, rel=1e-12)


async def test_observations_wait_in_memory_until_a_flush():
    with Delta(("platform_requests_total", IRIS_1_OK),) as delta:
        events.prediction(prediction())
        events.prediction(prediction())
        assert REGISTRY.get_sample_value("platform_requests_total", IRIS_1_OK) == delta.before[0]
    assert delta.changes == [2]  # sample() flushes, as a scrape does


async def test_the_event_loop_flushes_within_the_interval(monkeypatch):
    import asyncio

    monkeypatch.setattr(metrics, "FLUSH_INTERVAL_S", 0.05)
    metrics.flush()
    before = REGISTRY.get_sample_value("platform_requests_total", IRIS_1_OK) or 0.0
    events.prediction(prediction())
    assert (REGISTRY.get_sample_value("platform_requests_total", IRIS_1_OK) or 0.0) == before
    await asyncio.sleep(0.2)
    assert REGISTRY.get_sample_value("platform_requests_total", IRIS_1_OK) == before + 1


async def test_every_flush_every_requests_are_flushed_at_once(monkeypatch):
    monkeypatch.setattr(metrics, "FLUSH_EVERY", 10)
    metrics.flush()
    before = REGISTRY.get_sample_value("platform_requests_total", IRIS_1_OK) or 0.0
    for _ in range(10):
        events.prediction(prediction())
    assert REGISTRY.get_sample_value("platform_requests_total", IRIS_1_OK) == before + 10


async def test_a_scrape_from_another_thread_flushes_on_the_event_loop():
    import asyncio

    metrics.flush()
    before = REGISTRY.get_sample_value("platform_requests_total", IRIS_1_OK) or 0.0
    events.prediction(prediction())
    flushed_on: list[str] = []
    real_flush = metrics.flush

    def recording_flush() -> None:
        import threading

        flushed_on.append(threading.current_thread().name)
        real_flush()

    metrics.flush = recording_flush
    try:
        await asyncio.to_thread(metrics.refresh)
    finally:
        metrics.flush = real_flush
    assert flushed_on == ["MainThread"]
    assert REGISTRY.get_sample_value("platform_requests_total", IRIS_1_OK) == before + 1


# -- the view ----------------------------------------------------------------------------


def test_metrics_view_serves_the_text_format(client):
    events.prediction(prediction())
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    text = response.content.decode()
    assert value(text, "platform_requests_total", **IRIS_1_OK) == sample("platform_requests_total", **IRIS_1_OK)
    assert "# TYPE platform_request_duration_seconds histogram" in text
    # django-prometheus's HTTP metrics are in the same exposition.
    assert "django_http_requests_before_middlewares_total" in text


def test_metrics_view_speaks_openmetrics_and_gzip_when_asked(client):
    response = client.get("/metrics", HTTP_ACCEPT="application/openmetrics-text; version=1.0.0",
                          HTTP_ACCEPT_ENCODING="gzip")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response["Content-Encoding"] == "gzip"
    assert gzip.decompress(response.content).decode().endswith("# EOF\n")


def test_metrics_view_requires_the_token_when_one_is_set(client, settings):
    settings.PLATFORM_METRICS_TOKEN = "s3cret-token"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token").status_code == 200


def test_metrics_view_refuses_writes(client):
    assert client.post("/metrics").status_code == 405


# -- configuration -----------------------------------------------------------------------


def test_a_multiprocess_dir_set_after_prometheus_client_was_imported_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.raises(ImproperlyConfigured, match="before the process starts"):
        metrics._check_mode()


def test_bulk_observation_fails_loudly_when_prometheus_client_lacks_an_internal(monkeypatch):
    from prometheus_client import Histogram

    from monitoring import bulk_observe

    bulk_observe.check_internals()  # the pinned release has them
    original_init = Histogram.__init__

    def without_sum(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        if hasattr(self, "_sum"):
            del self._sum

    monkeypatch.setattr(Histogram, "__init__", without_sum)
    with pytest.raises(RuntimeError, match="_sum"):
        bulk_observe.check_internals()
