"""The shadow-cost scenario's arithmetic: the ratios against the mean of the two shadow-free rounds."""

from __future__ import annotations

import pytest

from bench.shadow import _results, summary


def load(rps, p99):
    return {"requests_per_s": rps, "latency_ms": {"p99": p99}, "counts": {"errors": {}, "unanswered": 0}}


def test_the_shadow_round_is_compared_with_the_mean_of_the_rounds_around_it():
    off = {"maximum": load(1000, 10.0), "open_loop": load(500, 4.0)}
    on = {"maximum": load(855, 13.2), "open_loop": load(500, 4.4)}
    off_again = {"maximum": load(900, 12.0), "open_loop": load(500, 4.0)}
    results = _results(off, on, off_again, {"comparisons": 9000.0, "dropped": 3.0, "failures": 0.0}, 500.0)
    assert results["throughput_ratio_at_maximum"] == pytest.approx(0.9)
    assert results["p99_ratio_at_maximum"] == pytest.approx(1.2)
    assert results["throughput_ratio_open_loop"] == 1.0 and results["p99_ratio_open_loop"] == pytest.approx(1.1)
    text = summary(results)
    assert "| shadow on | 855 | 13.2 | 500 | 4.4 |" in text and "compared 9000 requests, dropped 3" in text
