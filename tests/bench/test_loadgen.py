"""The load generator against a real daphne serving the transport ceiling (bench.ceiling)."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import pytest

from bench import servers
from bench.loadgen import LoadSpec, run_load

pytestmark = pytest.mark.realservice

DURATION_S = 1.5
WARMUP_S = 0.5
#: The server gets the first CPU this process may use, the client the last (the same one on a one-CPU machine).
SERVER_CPU = min(os.sched_getaffinity(0))
CLIENT_CPU = max(os.sched_getaffinity(0))


@pytest.fixture(scope="module")
def ceiling(tmp_path_factory: pytest.TempPathFactory):
    """One ceiling server for the module, pinned to SERVER_CPU, on an empty data directory (it never touches it)."""
    directory = tmp_path_factory.mktemp("ceiling")
    server = servers.start_server("ceiling", "ceiling", directory / "data", directory, timeout_s=60,
                                  cpus={SERVER_CPU})
    yield server
    server.stop()


def spec(server: servers.Server, **overrides: Any) -> LoadSpec:
    """A short load: 4 connections, half a second of warm-up, 1.5 s measured."""
    base = LoadSpec(url=server.url, model="iris", connections=4, in_flight=4, duration_s=DURATION_S,
                    warmup_s=WARMUP_S)
    return replace(base, **overrides)


def assert_counts_add_up(summary: dict) -> None:
    counts = summary["counts"]
    answered = counts["ok"] + sum(counts["errors"].values())
    assert counts["sent"] == answered + counts["unanswered"]
    assert counts["unanswered"] == 0
    assert counts["replies"] == counts["sent"]
    assert counts["unmatched_replies"] == {}
    assert counts["connections_closed_by_server"] == 0


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_closed_loop_counts_add_up(ceiling, encoding):
    result = run_load(spec(ceiling, rows=3, encoding=encoding, processes=2), server_pid=ceiling.pid)
    summary = result.summary()

    assert_counts_add_up(summary)
    window = summary["window"]
    assert window["ok"] > 100
    assert window["errors"] == {}
    assert summary["requests_per_s"] == pytest.approx(window["ok"] / DURATION_S)
    assert summary["rows_per_s"] == pytest.approx(3 * window["ok"] / DURATION_S)
    # The ceiling answers each request on its own: every batch is the request's 3 rows.
    assert summary["batch_size"]["histogram"] == {3: window["ok"]}
    latency = summary["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert summary["server_cpu_cores"] > 0
    assert summary["server_cpu_us_per_request"] == pytest.approx(
        summary["server_cpu_cores"] * DURATION_S / window["ok"] * 1e6, abs=0.1)
    assert summary["client_cpu_us_per_request"] > 0
    # Warm-up requests were sent and answered but are not in the window.
    assert summary["counts"]["ok"] > window["ok"]


def test_open_loop_sends_on_schedule(ceiling):
    rate = 200.0
    summary = run_load(spec(ceiling, rate_per_s=rate, processes=2)).summary()

    assert_counts_add_up(summary)
    # Scheduled sends in the window: exactly the rate times the duration, give or take one per process.
    assert abs(summary["window"]["requests"] - rate * DURATION_S) <= 2
    assert summary["requests_per_s"] == pytest.approx(rate, rel=0.02)
    assert summary["in_flight"] is None and summary["target_rate_per_s"] == rate
    assert summary["latency_ms"]["p99"] is not None
    assert summary["send_lag_ms"]["p50"] >= 0


def test_error_replies_are_counted_by_code(ceiling):
    result = run_load(spec(ceiling, model="no-such-model", features=4))
    summary = result.summary()

    assert_counts_add_up(summary)
    assert summary["counts"]["ok"] == 0
    assert summary["counts"]["errors"] == {"unknown_model": summary["counts"]["sent"]}
    assert summary["window"]["errors"]["unknown_model"] == summary["window"]["requests"] > 0
    assert summary["requests_per_s"] == 0
    assert len(set(result.answered_ids().tolist())) == summary["counts"]["sent"]


@pytest.mark.skipif(SERVER_CPU == CLIENT_CPU, reason="one CPU: server and client cannot be kept apart")
def test_server_and_client_run_on_the_cpus_they_were_given(ceiling):
    result = run_load(spec(ceiling, processes=2), server_pid=ceiling.pid, client_cpus={CLIENT_CPU})
    summary = result.summary()

    assert summary["server_cpus"] == [SERVER_CPU]
    assert summary["client_cpus"] == [CLIENT_CPU]
    assert summary["server_processes"] >= 1
    assert summary["window"]["ok"] > 100
    # Each side used CPU time of its own in the window.
    assert summary["server_cpu_cores"] > 0.05 and summary["client_cpu_cores"] > 0.05


def test_without_a_server_pid_no_server_figures_are_reported(ceiling):
    summary = run_load(spec(ceiling)).summary()

    assert summary["server_cpu_cores"] is None
    assert summary["server_cpu_us_per_request"] is None
    assert summary["server_cpus"] is None
    assert summary["client_cpus"] == sorted(os.sched_getaffinity(0))
