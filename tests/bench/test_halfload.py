"""The half-load step of the HTTP comparison: which rate it picks, and how its table reads."""

from __future__ import annotations

import pytest

from bench import pinning
from bench.http_compare import halfload, summary


def open_row(server: str, p50: float, p99: float, failed: int = 0) -> dict:
    return {"server": server, "closed_loop_requests_per_s": 6000.0, "target_rate_per_s": 3000.0,
            "achieved_rate_per_s": 2990.0, "connections": 50, "duration_s": 4.0, "requests": 12000,
            "ok": 12000 - failed, "latency_ms": {"p50": p50, "p90": p50 * 2, "p99": p99, "max": p99 * 3, "mean": p50},
            "send_lag_ms": {"p50": 0.01, "p90": 0.02, "p99": 0.05, "max": 0.4, "mean": 0.01}}


def test_half_load_is_half_the_rate_at_the_most_connections():
    closed = [{"connections": 10, "requests_per_s": 9000.0}, {"connections": 50, "requests_per_s": 7000.0}]

    assert halfload.half_rate(closed) == (3500.0, 50, 7000.0)
    assert halfload.half_rate([]) is None
    assert halfload.half_rate([{"connections": 50, "requests_per_s": 0.0}]) is None


def test_only_the_platform_and_mlserver_get_an_open_loop():
    closed = [{"connections": 50, "requests_per_s": 7000.0}]

    assert halfload.measure("naive-fastapi", "http://x/v2", {}, closed, duration_s=4.0,
                            placement=pinning.Pinning(None, None), pid=1) is None


@pytest.mark.parametrize(("p50", "p99", "failed", "met"), [(1.4, 4.9, 0, True), (1.6, 4.0, 0, False),
                                                           (1.0, 5.1, 0, False), (1.0, 4.0, 3, False)])
def test_the_platform_is_checked_against_both_targets(p50, p99, failed, met):
    assert halfload.meets_targets(open_row("platform", p50, p99, failed)) is met


def test_summary_has_a_half_load_table():
    results = {
        "rows": [], "errors": {}, "connections": [10, 50], "duration_s": 4.0, "repeats": 1,
        "mlserver": {"max_batch_size": 64, "max_batch_time_s": 0.002}, "ratios": {},
        "open_loop": [open_row("platform", 0.8, 3.0) | {"meets_targets": True}, open_row("mlserver", 2.5, 9.0)],
    }

    text = summary(results)

    assert "| platform `/v2` (this) | 3,000 | 2,990 | 0.80 | 1.60 | 3.00 | 9.00 | 0 | 0.05 | met |" in text
    assert "| MLServer 1.7.1, adaptive batching | 3,000 | 2,990 | 2.50 | 5.00 | 9.00 | 27.00 | 0 | 0.05 | - |" in text
    assert "p50 <= 1.5 ms and p99 <= 5 ms" in text
    assert "open loop" not in summary(results | {"open_loop": []}).lower()
