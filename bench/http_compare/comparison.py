"""The HTTP comparison: the platform's ``/v2/models/iris/infer`` against MLServer and a naive FastAPI app.

Each server in turn on the server CPUs, wrk on the client CPUs, the same
single-row iris request (each server asked for the label and the class
probabilities, in its own output names), closed loops at each connection
count, then, for the platform and MLServer, an open loop at half of the best
closed-loop rate (:mod:`.halfload`). Server CPU per request is the CPU time of the server's whole process
tree over the measured seconds, divided by the requests answered. The platform
runs twice: as configured by default (iris compiled to ONNX Runtime) and with
``PLATFORM_SKLEARN_ONNX=0``, the model on scikit-learn as the competitors run
it, so the table shows what the engine is worth apart from the rest.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import pinning, procstats, servers
from ..attempt import attempt
from . import competitors, halfload, openloop, wrk

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
TENSOR = {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": IRIS_ROW}
#: The request each server gets: the platform answers the label and probabilities unless told otherwise;
#: MLServer's scikit-learn runtime answers ``predict`` unless asked for ``predict_proba`` too.
BODIES: dict[str, dict[str, Any]] = {
    "platform": {"inputs": [TENSOR]},
    "platform-sklearn": {"inputs": [TENSOR]},
    "mlserver": {"inputs": [TENSOR], "outputs": [{"name": "predict"}, {"name": "predict_proba"}]},
    "naive-fastapi": {"inputs": [TENSOR]},
}


@dataclass
class HttpOptions:
    connections: list[int] = field(default_factory=lambda: [10, 50])
    duration_s: float = 6.0
    warmup_s: float = 2.0
    repeats: int = 2
    #: Where the competitors' virtual environment lives (made once).
    environment: Path = servers.REPO_ROOT / ".bench-env" / "mlserver"


@dataclass
class Target:
    name: str
    url: str
    pid: int
    stop: Callable[[], Any]


def measure(target: Target, options: HttpOptions, placement: pinning.Pinning) -> list[dict[str, Any]]:
    """Closed loops at each connection count, ``repeats`` rounds (the best counts), after a warm-up."""
    body = BODIES[target.name]
    wrk.run(target.url, body, connections=max(options.connections), duration_s=options.warmup_s,
            cpus=placement.client_cpus)
    rows = []
    for connections in options.connections:
        rounds: list[dict[str, Any]] = []
        for _ in range(options.repeats):
            servers.wait_idle(target.pid)
            cpu_before = procstats.tree_cpu_s(target.pid)
            result = wrk.run(target.url, body, connections=connections, duration_s=options.duration_s,
                             cpus=placement.client_cpus)
            cpu_s = procstats.tree_cpu_s(target.pid) - cpu_before
            rounds.append({
                "server": target.name, "connections": connections, "requests": result.requests,
                "requests_per_s": round(result.requests_per_s, 1), "p50_ms": result.p50_ms,
                "p90_ms": result.p90_ms, "p99_ms": result.p99_ms, "failed": result.failed,
                "server_cpu_us_per_request": round(cpu_s / result.requests * 1e6, 1) if result.requests else None,
            })
        best = max(rounds, key=lambda row: row["requests_per_s"])
        best["rounds_requests_per_s"] = [row["requests_per_s"] for row in rounds]
        print(f"  [{target.name}] http c={connections}: {best['requests_per_s']:.0f} req/s, "
              f"p50 {best['p50_ms']:.2f} ms, p99 {best['p99_ms']:.2f} ms, "
              f"{best['server_cpu_us_per_request']} µs CPU/req, {best['failed']} failed", flush=True)
        rows.append(best)
    return rows


def scenario(options: HttpOptions, prepared: Path, log_dir: Path, placement: pinning.Pinning) -> dict[str, Any]:
    """Every server in turn; the rows of the table, and the ratios the targets are about."""
    scratch = Path(tempfile.mkdtemp(prefix="bench-http-"))
    python = competitors.environment(options.environment)
    model_path = competitors.export_iris(scratch / "model")
    starters: list[tuple[str, Callable[[], Target]]] = [
        ("platform", lambda: _platform(prepared, scratch, log_dir, placement)),
        # The same server with its model on scikit-learn instead of ONNX Runtime: what the engine is worth.
        ("platform-sklearn", lambda: _platform(prepared, scratch, log_dir, placement, name="platform-sklearn",
                                               env={"PLATFORM_SKLEARN_ONNX": "0"})),
        ("mlserver", lambda: _competitor(competitors.start_mlserver(python, model_path, scratch, log_dir,
                                                                    placement.server_cpus))),
        ("naive-fastapi", lambda: _competitor(competitors.start_naive(python, model_path, scratch, log_dir,
                                                                      placement.server_cpus))),
    ]
    rows: list[dict[str, Any]] = []
    open_loop: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    for name, start in starters:
        try:
            target = start()
        except (competitors.CompetitorError, servers.ServerError) as exc:
            errors[name] = str(exc)
            print(f"bench: {name} could not start for the HTTP comparison: {exc}", flush=True)
            continue
        try:
            closed = measure(target, options, placement)
            rows.extend(closed)
            half = halfload.measure(name, target.url, BODIES[name], closed, duration_s=options.duration_s,
                                    placement=placement, pid=target.pid)
            if half is not None:
                open_loop.append(half)
        except (wrk.WrkError, openloop.OpenLoopError) as exc:
            errors[name] = str(exc)
        finally:
            target.stop()
    return {"rows": rows, "open_loop": open_loop, "errors": errors, "connections": options.connections,
            "duration_s": options.duration_s, "repeats": options.repeats,
            "mlserver": {"max_batch_size": competitors.MAX_BATCH_SIZE,
                         "max_batch_time_s": competitors.MAX_BATCH_TIME_S},
            "ratios": ratios(rows)}


def ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per connection count: the platform's throughput over each competitor's, and its p99 over MLServer's."""
    by = {(row["server"], row["connections"]): row for row in rows}
    out: dict[str, dict[str, float | None]] = {}
    for connections in sorted({row["connections"] for row in rows}):
        platform = by.get(("platform", connections))
        if platform is None:
            continue
        entry: dict[str, float | None] = {}
        for other in ("mlserver", "naive-fastapi"):
            row = by.get((other, connections))
            entry[f"throughput_vs_{other}"] = (round(platform["requests_per_s"] / row["requests_per_s"], 2)
                                               if row and row["requests_per_s"] else None)
        mlserver = by.get(("mlserver", connections))
        entry["p99_vs_mlserver"] = (round(platform["p99_ms"] / mlserver["p99_ms"], 3)
                                    if mlserver and mlserver["p99_ms"] else None)
        out[str(connections)] = entry
    return out


def _platform(prepared: Path, scratch: Path, log_dir: Path, placement: pinning.Pinning, *, name: str = "platform",
              env: dict[str, str] | None = None) -> Target:
    data_dir = servers.copy_data(prepared, scratch / f"{name}-data")
    server = servers.start_server(f"{name}-http", "platform", data_dir, log_dir, env=env, cpus=placement.server_cpus)
    return Target(name, f"http://127.0.0.1:{server.port}/v2/models/iris/infer", server.pid, server.stop)


def _competitor(competitor: competitors.Competitor) -> Target:
    return Target(competitor.name, competitor.infer_url, competitor.process.pid, competitor.stop)


LABELS = {"platform": "platform `/v2` (this)", "platform-sklearn": "platform `/v2`, model on scikit-learn",
          "mlserver": "MLServer 1.7.1, adaptive batching",
          "naive-fastapi": "naive FastAPI"}


def summary(results: dict[str, Any]) -> str:
    """The comparison as Markdown: one row per server and connection count, then the ratios."""
    rows = sorted(results["rows"], key=lambda row: (row["connections"], list(LABELS).index(row["server"])))
    lines = [
        f"iris, one row per request, closed loops of {results['duration_s']:g} s (best of {results['repeats']}), "
        f"wrk on its own core; MLServer batches up to {results['mlserver']['max_batch_size']} rows waiting up to "
        f"{results['mlserver']['max_batch_time_s'] * 1000:g} ms.\n",
        "| server | connections | requests/s | p50 ms | p90 ms | p99 ms | server CPU µs/request | failed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {LABELS[row['server']]} | {row['connections']} | {row['requests_per_s']:,.0f} | "
                     f"{row['p50_ms']:.2f} | {row['p90_ms']:.2f} | {row['p99_ms']:.2f} | "
                     f"{row['server_cpu_us_per_request']} | {row['failed']} |")
    for connections, ratio in results["ratios"].items():
        parts = [f"{key.replace('_', ' ')} {value}×" for key, value in ratio.items() if value is not None]
        lines.append(f"\nAt {connections} connections: " + ", ".join(parts) + ".")
    lines.extend(halfload.table(results.get("open_loop", []), LABELS))
    for name, error in results["errors"].items():
        lines.append(f"\n{name} could not be measured: {error.splitlines()[0]}")
    return "\n".join(lines) + "\n"


def in_bench(prepared: Path, run_dir: Path, placement: pinning.Pinning) -> dict[str, Any] | None:
    """The comparison as ``make bench`` runs it: results (also in ``http.md``), or None with the reason printed."""
    results = attempt("HTTP comparison", lambda: scenario(HttpOptions(), prepared, run_dir, placement),
                      (competitors.CompetitorError, servers.ServerError, wrk.WrkError, openloop.OpenLoopError))
    if results is None:
        return None
    text = summary(results)
    (run_dir / "http.md").write_text(f"# Open Inference Protocol over HTTP\n\n{text}")
    print(text, flush=True)
    return results
