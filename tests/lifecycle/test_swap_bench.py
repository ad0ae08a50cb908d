"""The swap scenario's arithmetic and verdicts (``bench.swap``, ``bench.targets``), without running it."""

from __future__ import annotations

import numpy as np

from bench.loadgen import LoadResult, LoadSpec
from bench.report import swap_summary
from bench.swap import latency_split
from bench.targets import swap_targets


def load(sent_at: list[float], latency_s: list[float], codes: list[str] | None = None) -> LoadResult:
    sent = np.array(sent_at)
    return LoadResult(
        spec=LoadSpec(url="ws://x", model="iris", rate_per_s=100.0, duration_s=10.0, warmup_s=1.0),
        start=0.0, ids=np.arange(sent.size), sent_at=sent, lag=np.zeros(sent.size),
        done_at=sent + np.array(latency_s), codes=np.array(codes or ["ok"] * sent.size), batch_size=np.ones(sent.size),
        replies=sent.size, unmatched={}, closed_by_server=0, client_cpu_s=0.0, features=4,
    )


def test_requests_sent_just_after_a_commit_count_as_during_the_swap():
    # Warm-up (t < 1) is left out; a commit at t=5: requests sent in [5, 6) are "during".
    result = load([0.5, 2.0, 3.0, 5.0, 5.5, 6.5, 8.0, 9.0], [9.0, 0.010, 0.010, 0.050, 0.040, 0.010, 0.010, 0.010])
    split = latency_split([result], [5.0], window_s=1.0)
    assert (split["swap_requests"], split["steady_requests"]) == (2, 5)
    assert split["p99_swap_ms"] > 49 and split["p99_steady_ms"] == 10.0


def test_errors_are_left_out_of_the_latency():
    result = load([2.0, 3.0], [0.010, 5.0], codes=["ok", "timeout"])
    assert latency_split([result], [], window_s=1.0)["p99_steady_ms"] == 10.0


def swap_results(**changes):
    results = {
        "processes": 2, "swaps": 10, "interval_s": 2.0, "window_s": 1.0, "channel_layer": "redis",
        "rate_per_s": 5000.0, "max_requests_per_s": 10000.0, "requests": 100000, "errors": {},
        "p50_steady_ms": 5.0, "p99_steady_ms": 40.0, "p50_swap_ms": 6.0, "p99_swap_ms": 60.0,
        "convergence_s": {"max": 0.2, "median": 0.05},
        "rss_mb": {"before": [200.0, 210.0], "after": [200.5, 210.0], "growth": 0.5}, "model_mb": 0.01,
        "loaded_versions_after": [["iris:1", "iris:6"], ["iris:1", "iris:6"]],
    }
    results.update(changes)
    return results


def test_the_verdicts():
    verdicts = {v["target"].split(":")[1].strip(): v["pass"] for v in swap_targets(swap_results())}
    assert all(verdicts.values()) and len(verdicts) == 4
    failing = swap_targets(swap_results(errors={"timeout": 3}, p99_swap_ms=90.0,
                                        convergence_s={"max": None, "median": None},
                                        rss_mb={"before": [200.0], "after": [230.0], "growth": 30.0}))
    assert [v["pass"] for v in failing] == [False, False, False, False]
    assert "**FAIL**" in failing[0]["verdict"] and "a process never served one" in failing[2]["result"]
    assert swap_targets(None) == []


def test_the_summary_names_what_ran_and_what_was_seen():
    text = swap_summary(swap_results())
    assert "2 server processes, redis channel layer" in text
    assert "| 100,000 | 0 | 5.0 / 40.0 | 6.0 / 60.0 | 0.050 / 0.200 | 200.0 -> 200.5, 210.0 -> 210.0 |" in text
