"""Merging every process's snapshots into the one message a dashboard shows."""

from __future__ import annotations

import numpy as np
import pytest

from frontend.merge import HOLD_RATES_S, STALE_AFTER_S, PlatformView, merge_latency
from monitoring.livestats import StatsAggregator, latency_summary
from platform_core.wiring import serving_state
from tests.frontend.conftest import prediction


@pytest.fixture
def processes(served_models):
    """Two aggregators standing for two server processes."""
    first, second = StatsAggregator(serving_state=serving_state), StatsAggregator(serving_state=serving_state)
    first.pid, second.pid = 1001, 1002
    return first, second


def serve(aggregator, count, *, rows=1, model="iris", total_ms=2.0):
    for _ in range(count):
        aggregator.observe_prediction(prediction(model, rows=rows, total_ms=total_ms))


def snapshot(aggregator, interval_s=1.0):
    taken = aggregator.snapshot()
    taken["interval_s"] = interval_s
    return taken


def test_totals_are_the_sum_of_the_processes_and_each_has_its_share(processes):
    first, second = processes
    serve(first, 30, rows=2)
    serve(second, 10, rows=2)
    serve(second, 5, model="wine")
    second.observe_prediction(prediction("iris", "invalid_input"))
    view = PlatformView()

    view.add(snapshot(first), now=100.0)
    view.add(snapshot(second), now=100.1)
    message = view.message(now=100.5)

    assert message["type"] == "stats"
    assert message["totals"]["predictions"] == 45
    assert message["totals"]["rows"] == 85
    assert message["totals"]["errors_by_code"] == {"invalid_input": 1}
    shares = {process["pid"]: (process["totals"]["predictions"], process["share"]) for process in message["processes"]}
    assert shares == {1001: (30, pytest.approx(30 / 45, abs=1e-4)), 1002: (15, pytest.approx(15 / 45, abs=1e-4))}
    assert message["rates"]["predictions"] == pytest.approx(45.0)
    assert message["models"]["iris"]["totals"] == {"predictions": 40, "rows": 80, "errors": 1}
    assert message["models"]["iris"]["rates"]["predictions"] == pytest.approx(40.0)
    assert message["models"]["iris"]["active_version"] == 2
    assert message["models"]["wine"]["totals"]["predictions"] == 5


def test_two_windows_between_messages_are_averaged_not_added(processes):
    first, _ = processes
    view = PlatformView()
    serve(first, 10)
    view.add(snapshot(first), now=1.0)
    serve(first, 30)
    view.add(snapshot(first), now=2.0)

    message = view.message(now=2.5)

    assert message["rates"]["predictions"] == pytest.approx(20.0)
    assert message["totals"]["predictions"] == 40


def test_a_late_process_keeps_its_rates_for_a_moment_then_leaves(processes):
    first, _ = processes
    view = PlatformView()
    serve(first, 10)
    view.add(snapshot(first), now=10.0)
    assert view.message(now=10.5)["rates"]["predictions"] == pytest.approx(10.0)

    assert view.message(now=11.5)["rates"]["predictions"] == pytest.approx(10.0), "one late snapshot dropped the rate"
    quiet = view.message(now=10.5 + HOLD_RATES_S + 0.5)
    assert quiet["rates"]["predictions"] == 0
    assert quiet["totals"]["predictions"] == 10

    gone = view.message(now=10.0 + STALE_AFTER_S + 0.1)
    assert gone["processes"] == []
    assert gone["totals"]["predictions"] == 0


def test_a_restarted_process_replaces_its_former_self(processes):
    first, _ = processes
    view = PlatformView()
    serve(first, 10)
    view.add(snapshot(first), now=1.0)
    restarted = StatsAggregator(serving_state=serving_state)
    restarted.pid, restarted.started_at = first.pid, first.started_at + 60
    serve(restarted, 3)
    view.add(snapshot(restarted), now=2.0)

    message = view.message(now=2.5)

    assert [p["pid"] for p in message["processes"]] == [first.pid]
    assert message["totals"]["predictions"] == 3


def test_feed_items_are_sent_once(processes):
    first, second = processes
    view = PlatformView()
    serve(first, 2)
    serve(second, 1)
    view.add(snapshot(first), now=1.0)
    view.add(snapshot(second), now=1.0)

    assert len(view.message(now=1.5)["recent"]) == 3
    assert view.message(now=2.5)["recent"] == []


def test_gauges_are_summed(processes):
    first, second = processes
    first.observe_connection(+1)
    first.observe_connection(+1)
    second.observe_connection(+1)
    second.observe_connection(+1)
    second.dashboard_opened()
    second.observe_in_flight(+1)
    view = PlatformView()
    view.add(snapshot(first), now=1.0)
    view.add(snapshot(second), now=1.0)

    message = view.message(now=1.5)

    assert message["connections"] == 3
    assert message["dashboards"] == 1
    assert message["in_flight"] == 1


def test_one_process_keeps_its_exact_percentiles():
    summary = latency_summary([float(ms) for ms in range(1, 101)])
    merged = merge_latency([summary, latency_summary([])])
    assert (merged["p50"], merged["p95"], merged["p99"]) == (summary["p50"], summary["p95"], summary["p99"])


def test_merged_percentiles_are_close_to_those_of_all_requests_together():
    rng = np.random.default_rng(0)
    fast = rng.lognormal(mean=0.5, sigma=0.4, size=3000)
    slow = rng.lognormal(mean=2.5, sigma=0.3, size=1000)

    merged = merge_latency([latency_summary(fast.tolist()), latency_summary(slow.tolist())])

    everything = np.concatenate([fast, slow])
    assert merged["count"] == 4000
    for name, q in (("p50", 50), ("p95", 95), ("p99", 99)):
        exact = np.percentile(everything, q)
        assert merged[name] == pytest.approx(exact, rel=0.1), name
    assert merged["max"] == pytest.approx(everything.max(), abs=1e-3)
