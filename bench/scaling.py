"""The scaling scenario: throughput and server CPU per request with 1, 2, … workers on the server's cores.

``make bench`` runs it after the other scenarios (``bench.run``); ``python -m
bench.scaling`` runs it alone. For each worker count the platform serves
through ``python -m platform_core.server --workers N`` (one plain process for
N = 1), pinned to the server's CPUs, on a fresh copy of the iris model, and
the load generator, pinned to its own CPUs, drives it with the closed-loop
maximum load of ``iris x1`` (the benchmark's 32 connections, 8 requests in
flight on each). Reported per worker count: requests per second, the server's
CPU per request (every worker and its log writer together) and the cores it
used, latency, and the scaling efficiency ``rps(N) / (N x rps(1))``.

The worker counts run from 1 to the number of server CPUs, unless
``--workers`` lists them: more workers than cores shows what the workers
cost (CPU per request should stay flat), not how they scale.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import pinning, servers
from .attempt import attempt
from .loadgen import LoadError, LoadSpec, format_line, run_load

MODEL = "iris"
READY_TIMEOUT_S = 180.0


@dataclass
class ScalingOptions:
    #: Worker counts; None: 1 up to the number of server CPUs.
    workers: list[int] | None = None
    duration_s: float = 6.0
    warmup_s: float = 3.0
    connections: int = 32
    in_flight: int = 8
    processes: int = 1
    encoding: str = "json"


def worker_counts(options: ScalingOptions, server_cpus: Collection[int] | None) -> list[int]:
    if options.workers:
        return options.workers
    cores = len(server_cpus) if server_cpus else 1
    return list(range(1, cores + 1))


def start(workers: int, data_dir: Path, log: Path, cpus: Collection[int] | None) -> tuple[subprocess.Popen[bytes], str]:
    """The platform with ``workers`` workers, once every one of them answers."""
    port = servers.free_port()
    url = f"ws://127.0.0.1:{port}{servers.PREDICT_PATH}"
    command = [sys.executable, "-m", "platform_core.server", "-b", "127.0.0.1", "-p", str(port),
               *(["--workers", str(workers)] if workers > 1 else []), servers.APPLICATIONS["platform"]]
    with open(log, "ab") as output:
        process = subprocess.Popen(pinning.under_taskset(cpus, command), cwd=servers.REPO_ROOT,
                                   env=servers.server_env(data_dir), stdin=subprocess.DEVNULL,
                                   stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + READY_TIMEOUT_S
    # Each worker logs its models' loading once ready to serve them; then wait for the start-up to settle.
    while process.poll() is None and time.monotonic() < deadline:
        if servers.tail(log, 10_000).count(f"Loaded {MODEL} v") >= workers and ready(url):
            servers.wait_idle(process.pid, timeout_s=30)
            return process, url
        time.sleep(0.5)
    stop(process)
    raise servers.ServerError(f"{workers} workers were not ready after {READY_TIMEOUT_S:.0f} s:\n"
                              f"{servers.tail(log)}")


def ready(url: str) -> bool:
    from websockets.exceptions import WebSocketException
    from websockets.sync.client import connect

    try:
        with connect(url, open_timeout=5, close_timeout=2) as ws:
            return '"ready"' in str(ws.recv(timeout=10))
    except (OSError, TimeoutError, WebSocketException):
        return False


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=servers.STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def measure(workers: int, prepared: Path, run_dir: Path, placement: pinning.Pinning,
            options: ScalingOptions) -> dict[str, Any]:
    data_dir = servers.copy_data(prepared, run_dir / "data" / f"scaling-{workers}")
    process, url = start(workers, data_dir, run_dir / f"scaling-{workers}.log", placement.server_cpus)
    try:
        spec = LoadSpec(url=url, model=MODEL, rows=1, encoding=options.encoding, connections=options.connections,
                        in_flight=options.in_flight, duration_s=options.duration_s, warmup_s=options.warmup_s,
                        processes=options.processes, id_base=workers * 10**12)
        summary = run_load(spec, server_pid=process.pid, client_cpus=placement.client_cpus).summary()
    finally:
        stop(process)
    print(f"bench: scaling, {workers} worker(s): {format_line(summary)}", flush=True)
    return {"workers": workers, **summary}


def scenario(options: ScalingOptions, run_dir: Path, placement: pinning.Pinning) -> dict[str, Any]:
    """Run every worker count; the results with each count's efficiency."""
    counts = worker_counts(options, placement.server_cpus)
    scratch = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
    try:
        prepared = scratch / "prepared"
        env = servers.server_env(prepared)
        servers.manage("migrate", "--no-input", env=env)
        servers.manage("load_demo_models", MODEL, env=env)
        runs = [measure(workers, prepared, run_dir, placement, options) for workers in counts]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    base = runs[0]["requests_per_s"] / runs[0]["workers"]
    for entry in runs:
        entry["efficiency"] = round(entry["requests_per_s"] / (entry["workers"] * base), 3) if base else None
    return {
        "model": MODEL, "rows": 1, "server_cpus": pinning.format_cpu_list(placement.server_cpus),
        "client_cpus": pinning.format_cpu_list(placement.client_cpus), "runs": runs,
    }


def table(results: dict[str, Any]) -> str:
    lines = [f"Scaling, {results['model']} x1, server on CPUs {results['server_cpus']}, "
             f"load generator on {results['client_cpus']}:",
             "| workers | requests/s | server CPU µs/request | server cores | p50 ms | p99 ms | efficiency |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for run in results["runs"]:
        latency = run["latency_ms"] or {}
        lines.append(f"| {run['workers']} | {run['requests_per_s']:.0f} | {run['server_cpu_us_per_request']} | "
                     f"{run['server_cpu_cores']:.2f} | {latency.get('p50', '-')} | {latency.get('p99', '-')} | "
                     f"{run['efficiency']} |")
    return "\n".join(lines)


def in_bench(encoding: str, run_dir: Path, placement: pinning.Pinning) -> dict[str, Any] | None:
    """The scenario as ``bench.run`` runs it; None (with the reason printed) if it could not run."""
    results = attempt("scaling scenario", lambda: scenario(ScalingOptions(encoding=encoding), run_dir, placement),
                      (servers.ServerError, LoadError))
    if results is None:
        return None
    print(table(results), flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    defaults = ScalingOptions()
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default=None, help="worker counts, e.g. 1,2,4 (default: 1 up to the server CPUs)")
    parser.add_argument("--duration", type=float, default=defaults.duration_s)
    parser.add_argument("--warmup", type=float, default=defaults.warmup_s)
    parser.add_argument("--connections", type=int, default=defaults.connections)
    parser.add_argument("--in-flight", type=int, default=defaults.in_flight)
    parser.add_argument("--processes", type=int, default=defaults.processes, help="load generator processes")
    parser.add_argument("--encoding", choices=["json", "msgpack"], default=defaults.encoding)
    parser.add_argument("--server-cpus", default=pinning.DEFAULT_SERVER_CPUS)
    parser.add_argument("--client-cpus", default=pinning.DEFAULT_CLIENT_CPUS)
    parser.add_argument("--out", type=Path, default=servers.REPO_ROOT / "bench-results")
    args = parser.parse_args(argv)
    options = ScalingOptions(
        workers=[int(n) for n in args.workers.split(",")] if args.workers else None, duration_s=args.duration,
        warmup_s=args.warmup, connections=args.connections, in_flight=args.in_flight, processes=args.processes,
        encoding=args.encoding,
    )
    placement = pinning.plan(args.server_cpus, args.client_cpus)
    if placement.warning:
        print(f"bench: warning: {placement.warning}", file=sys.stderr, flush=True)
    run_dir = args.out / f"scaling-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True)
    pinning.pin_current_process(placement.client_cpus)
    results = scenario(options, run_dir, placement)
    shutil.rmtree(run_dir / "data", ignore_errors=True)
    (run_dir / "scaling.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results), flush=True)
    print(f"bench: results in {run_dir / 'scaling.json'}", flush=True)


if __name__ == "__main__":
    main()
