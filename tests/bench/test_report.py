"""The report's tables: server CPU per request and the CPUs each side ran on, as a reader sees them."""

from __future__ import annotations

from typing import Any

from bench import report


def run(server: str, kind: str, rps: float, us_per_request: float | None, **extra: Any) -> dict[str, Any]:
    """A summary as ``LoadResult.summary()`` writes it, reduced to what the report reads."""
    latency = {"p50": 1.0, "p95": 2.0, "p99": 3.0, "max": 4.0, "mean": 1.5}
    return {
        "server": server, "kind": kind, "workload": "iris x1", "mode": "closed" if kind == "max" else "open",
        "requests_per_s": rps, "rows_per_s": rps, "target_rate_per_s": None if kind == "max" else rps,
        "latency_ms": latency, "send_lag_ms": latency,
        "batch_size": {"mean": 1.0, "p50": 1, "p99": 1, "max": 1},
        "window": {"requests": 100, "ok": 100, "errors": {}},
        "server_cpu_cores": 0.9, "client_cpu_cores": 0.8, "server_cpu_us_per_request": us_per_request,
        "server_cpus": [0], "client_cpus": [1], **extra,
    }


def results(**overrides: Any) -> dict[str, Any]:
    base = {
        "started_at": "2025-01-01T00:00:00+00:00",
        "machine": {"cpu_model": "Test CPU", "cpu_cores": 2, "memory_gib": 4.0, "python": "3.11.7",
                    "kernel": "6.1", "git_commit": "abc1234", "git_dirty": False},
        "load_average_start": [0.1, 0.1, 0.1],
        "options": {"connections": 32, "in_flight": 8, "encoding": "json", "processes": 1, "warmup_s": 2,
                    "duration_s": 6, "sweep_duration_s": 4, "repeats": 2},
        "pinning": {"server_cpus": [0], "client_cpus": [1], "warning": None},
        "runs": [
            run("platform", "max", 9000.0, 98.4, rounds_requests_per_s=[8900.0, 9000.0]),
            run("ceiling", "max", 12000.0, 76.0, rounds_requests_per_s=[12000.0]),
            run("platform", "half", 4500.0, 120.6),
            run("platform", "sweep", 2250.0, None),
        ],
    }
    return {**base, **overrides}


def row(markdown: str, *cells: str) -> str:
    """The first table row holding every one of ``cells``."""
    return next(line for line in markdown.splitlines()
                if line.startswith("|") and all(f"| {cell} |" in line for cell in cells))


def test_every_table_gives_server_cpu_per_request_beside_throughput_and_latency():
    text = report.markdown(results())

    assert "| server µs/req |" in row(text, "workload", "server", "req/s (best round)")
    assert "| 98 |" in row(text, "platform", "9,000")
    assert "| 76 |" in row(text, "transport ceiling", "12,000")
    assert "| 121 |" in row(text, "platform", "4,500")
    # A run without a server measurement shows a dash, not zero.
    assert row(text, "platform", "2,250").endswith("| - |")


def test_the_header_says_where_server_and_client_ran():
    text = report.markdown(results())

    assert ("Server processes (with their children) ran on CPU 0, the load generator on CPU 1. "
            "Read from /proc at the end of each load: server processes allowed on CPU 0, client processes on CPU 1, "
            "over all loads.") in text
    assert "CPU 0" in report.readme_table(results())


def test_the_header_shows_a_load_that_ran_elsewhere():
    stray = run("naive", "max", 50.0, 20000.0, server_cpus=[0, 1])
    text = report.markdown(results(runs=[*results()["runs"], stray]))

    assert "server processes allowed on CPU 0-1" in text


def test_results_without_pinning_say_the_cores_were_shared():
    text = report.markdown(results(pinning=None))

    assert "Server and client were not pinned: they shared the machine's cores." in text
