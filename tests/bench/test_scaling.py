"""The scaling scenario's plan and report, without servers (``make bench`` runs it for real)."""

from __future__ import annotations

from bench import scaling
from bench.scaling import ScalingOptions


def test_worker_counts_go_up_to_the_server_cpus():
    assert scaling.worker_counts(ScalingOptions(), frozenset({0, 1, 2, 3})) == [1, 2, 3, 4]
    assert scaling.worker_counts(ScalingOptions(), None) == [1]


def test_given_worker_counts_win_over_the_cpus():
    assert scaling.worker_counts(ScalingOptions(workers=[1, 2]), frozenset({0})) == [1, 2]


def test_the_table_shows_every_run_with_its_efficiency():
    runs = [{"workers": n, "requests_per_s": rps, "server_cpu_us_per_request": 300.0, "server_cpu_cores": 0.9 * n,
             "latency_ms": {"p50": 5.0, "p99": 9.0}, "efficiency": eff}
            for n, rps, eff in ((1, 3000.0, 1.0), (2, 5400.0, 0.9))]
    text = scaling.table({"model": "iris", "server_cpus": "0-1", "client_cpus": "2", "runs": runs})
    assert "| 2 | 5400 | 300.0 | 1.80 | 5.0 | 9.0 | 0.9 |" in text
