"""One whole comparison on this machine: the platform against the transport ceiling and the naive approach.

``make bench`` runs it. It starts seven servers, each on its own copy of one
prepared data directory (so every prediction log starts empty), all through
``python -m platform_core.server``:

1. ``platform``: the platform as deployed, batching, prediction log and metrics on;
2. ``platform-nomon``: the same with ``PLATFORM_MONITORING=0``, for what monitoring costs;
   ``platform-nojournal``: with ``PLATFORM_LOG_JOURNAL=0``, for what the crash-safe journal costs;
3. ``ceiling``: ``bench.ceiling``, a bare Channels consumer with a fixed reply;
4. ``ceiling-nocleanup``: the same without Channels' per-frame database cleanup;
5. ``ceiling-direct``: the same on the platform's transport path (own read loop, synchronous send);
6. ``naive``: ``bench.naive``, the tutorial's consumer calling the model per message.

Each server runs on its own core(s) (``--server-cpus``, default CPU 0, under
``taskset``, its children included) and the load generator on the other(s)
(``--client-cpus``, default CPU 1), so every server is measured on the same
core, reference servers in the same run as the platform; the report gives
each server's CPU time per request beside its throughput and latency.

All get the same loads, for the scikit-learn model ``iris`` and the Keras
model ``digits``, with 1-row and 32-row requests:

- a closed loop for maximum throughput, the servers taking turns for
  ``repeats`` rounds (the best round counts: other work on the machine only
  ever slows a server down);
- an open loop at half the platform's maximum, on the platform and the
  ceiling (the p99 target);
- an open-loop sweep of iris 1-row requests at fractions of each server's own
  maximum, for the latency-vs-throughput plot.

The platform is then profiled with py-spy under maximum load, and once it has
stopped (SIGTERM: in-flight requests answered, log flushed) its prediction log
is checked against every request its clients saw answered.

Last, the swap scenario (``bench.swap``, about a minute; ``--swaps 0`` leaves
it out): two platform processes at half load while model versions are
activated and rolled back; and the shadow-cost scenario (``bench.shadow``,
about a minute; ``--no-shadow`` leaves it out).

After the comparison over WebSockets, the HTTP comparison
(``bench.http_compare``, a few minutes, ``--no-http`` leaves it out): the
platform's ``/v2`` infer against MLServer with adaptive batching and a naive
FastAPI app, single-row iris requests from wrk at 10 and 50 connections.

Results go to ``bench-results/<timestamp>/`` (``results.json``,
``results.md``, ``latency_vs_throughput.png``, the profiles, server logs) and
are copied to ``bench-results/latest/``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import http_compare, machine, pinning, procstats, report, scaling, servers, shadow, swap
from .attempt import attempt
from .loadgen import LoadError, LoadResult, LoadSpec, format_line, run_load
from .profiling import profile_under_load, py_spy

RESULTS_ROOT = servers.REPO_ROOT / "bench-results"
#: Copied to ``bench-results/latest/`` after every run (the logs stay in the run's own folder).
LATEST_FILES = ("results.json", "results.md", "latency_vs_throughput.png")

#: (name, application, environment overrides)
SERVERS: list[tuple[str, str, dict[str, str]]] = [
    ("platform", "platform", {}),
    ("platform-nomon", "platform", {"PLATFORM_MONITORING": "0"}),
    # What the crash-safe journal costs: maximum loads and half load.
    ("platform-nojournal", "platform", {"PLATFORM_LOG_JOURNAL": "0"}),
    # Neither reports anything; the switch keeps the monitoring app's sinks uninstalled.
    ("ceiling", "ceiling", {"PLATFORM_MONITORING": "0"}),
    # Maximum loads only: what Channels' per-frame database cleanup costs the ceiling.
    ("ceiling-nocleanup", "ceiling", {"PLATFORM_MONITORING": "0", "BENCH_CEILING_DB_CLEANUP": "0"}),
    # Maximum loads only: the bare responder with every transport shortcut the platform takes.
    ("ceiling-direct", "ceiling", {"PLATFORM_MONITORING": "0", "BENCH_CEILING_DIRECT": "1"}),
    ("naive", "naive", {"PLATFORM_MONITORING": "0"}),
]
WORKLOADS: list[tuple[str, int]] = [("iris", 1), ("iris", 32), ("digits", 1), ("digits", 32)]
SWEEP_WORKLOAD = ("iris", 1)


@dataclass
class Options:
    duration_s: float = 6.0
    warmup_s: float = 2.0
    repeats: int = 2
    sweep_duration_s: float = 4.0
    connections: int = 32
    in_flight: int = 8
    processes: int = 1
    encoding: str = "json"
    half_load: float = 0.5
    sweep: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 0.9])
    profile_s: float = 8.0
    profile_workloads: list[tuple[str, int]] = field(default_factory=lambda: [("iris", 1), ("iris", 32)])
    servers: list[str] = field(default_factory=lambda: [name for name, _, _ in SERVERS])
    workloads: list[tuple[str, int]] = field(default_factory=lambda: list(WORKLOADS))
    out: Path = RESULTS_ROOT
    keep_data: bool = False
    #: CPU lists in taskset's syntax, or "none" (see ``bench.pinning``).
    server_cpus: str = pinning.DEFAULT_SERVER_CPUS
    client_cpus: str = pinning.DEFAULT_CLIENT_CPUS
    #: Swaps of the swap scenario; 0 leaves it out.
    swaps: int = swap.SwapOptions.swaps
    #: Whether to run the shadow-cost scenario.
    shadow: bool = True
    #: Whether to run the scaling scenario (bench.scaling).
    scaling: bool = True
    #: Whether to run the HTTP comparison with MLServer and a naive FastAPI app (bench.http_compare).
    http: bool = True


def workload_name(model: str, rows: int) -> str:
    return f"{model} x{rows}"


class Comparison:
    """Runs the loads, keeps every summary and the ids each server answered."""

    def __init__(self, options: Options, run_dir: Path, placement: pinning.Pinning) -> None:
        self.options = options
        self.run_dir = run_dir
        self.placement = placement
        self.runs: list[dict[str, Any]] = []
        self.max_rps: dict[tuple[str, str], float] = {}
        self.profiles: list[dict[str, Any]] = []
        self.answered: dict[str, list[str]] = defaultdict(list)
        self.log_checks: dict[str, Any] = {}
        self.exit_codes: dict[str, int | None] = {}
        self._id_runs = 0

    def spec(self, server: servers.Server, model: str, rows: int, *, rate: float | None = None,
             duration_s: float | None = None) -> LoadSpec:
        options = self.options
        self._id_runs += 1
        return LoadSpec(
            url=server.url, model=model, rows=rows, encoding=options.encoding, connections=options.connections,
            in_flight=options.in_flight, rate_per_s=rate, duration_s=duration_s or options.duration_s,
            warmup_s=options.warmup_s, processes=options.processes,
            # Distinct ids in every run: one server's prediction log spans several runs.
            id_base=self._id_runs * 10**13,
        )

    def load(self, server: servers.Server, kind: str, spec: LoadSpec, **extra: Any) -> dict[str, Any]:
        result = run_load(spec, server_pid=server.pid, client_cpus=self.placement.client_cpus)
        return self.keep(server, kind, spec, result, **extra)

    def keep(self, server: servers.Server, kind: str, spec: LoadSpec, result: LoadResult,
             **extra: Any) -> dict[str, Any]:
        self.answered[server.name].extend(str(i) for i in result.answered_ids().tolist())
        summary = {"server": server.name, "kind": kind, "workload": workload_name(spec.model, spec.rows),
                   **result.summary(), **extra}
        self.runs.append(summary)
        print(f"  [{server.name}] {kind}: {format_line(summary)}", flush=True)
        # A server still busy with a backlog would slow the next load down.
        servers.wait_idle(server.pid)
        return summary

    def compare(self, prepared: Path) -> None:
        """Start every server, run the loads, stop them, check the platform's prediction log."""
        started: list[servers.Server] = []
        try:
            for name, kind, env in SERVERS:
                if name in self.options.servers:
                    data_dir = servers.copy_data(prepared, self.run_dir / "data" / name)
                    server = servers.start_server(name, kind, data_dir, self.run_dir, env,
                                                  cpus=self.placement.server_cpus)
                    started.append(server)
                    allowed = {pid: pinning.format_cpu_list(cpus)
                               for pid, cpus in procstats.tree_allowed_cpus(server.pid).items()}
                    print(f"{name}: ready in {server.started_in_s:.1f} s (pid {server.pid}, port {server.port}, "
                          f"CPUs by pid {allowed})", flush=True)
            self.maximum(started)
            self.half_load([s for s in started if s.name in ("platform", "platform-nojournal", "ceiling")])
            self.sweep([s for s in started if s.name in ("platform", "platform-nomon", "ceiling", "naive")])
            platform = next((s for s in started if s.name == "platform"), None)
            if platform is not None and self.options.profile_s > 0:
                for model, rows in self.options.profile_workloads:
                    self.profile(platform, model, rows)
        finally:
            for server in started:
                try:
                    self.exit_codes[server.name] = server.stop()
                except servers.ServerError as exc:
                    print(f"{server.name}: {exc}", file=sys.stderr)
                    self.exit_codes[server.name] = None
        for server in started:
            if server.name == "platform":
                check = servers.check_prediction_log(server.data_dir, self.answered[server.name]).as_dict()
                print(f"{server.name}: prediction log {check}", flush=True)
                self.log_checks[server.name] = check

    def maximum(self, started: list[servers.Server]) -> None:
        """Closed loop, every workload, each server in turn, ``repeats`` rounds; the best round counts.

        Taking turns spreads whatever else the machine does over all servers
        alike; other work only ever slows a server down, so the best round is
        the closest to what the server can do.
        """
        for model, rows in self.options.workloads:
            rounds: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for repeat in range(self.options.repeats):
                # Rotate the order so no server always runs first after a quiet spell.
                shift = repeat % len(started)
                for server in started[shift:] + started[:shift]:
                    summary = self.load(server, "round", self.spec(server, model, rows), repeat=repeat)
                    rounds[server.name].append(summary)
            for name, summaries in rounds.items():
                best = max(summaries, key=lambda summary: summary["requests_per_s"])
                self.runs.append({**best, "kind": "max",
                                  "rounds_requests_per_s": [round(s["requests_per_s"], 1) for s in summaries]})
                self.max_rps[(name, workload_name(model, rows))] = best["requests_per_s"]

    def half_load(self, targets: list[servers.Server]) -> None:
        """Open loop at a fraction of the platform's maximum, for the p99 target; the ceiling for reference."""
        for model, rows in self.options.workloads:
            platform_max = self.max_rps.get(("platform", workload_name(model, rows)))
            if platform_max:
                for server in targets:
                    rate = self.options.half_load * platform_max
                    self.load(server, "half", self.spec(server, model, rows, rate=rate))

    def sweep(self, targets: list[servers.Server]) -> None:
        """Open loop at fractions of each server's own maximum, iris 1-row: the latency-vs-throughput plot."""
        if SWEEP_WORKLOAD not in self.options.workloads:
            return
        for server in targets:
            own_max = self.max_rps.get((server.name, workload_name(*SWEEP_WORKLOAD)))
            if not own_max:
                continue
            for fraction in self.options.sweep:
                spec = self.spec(server, *SWEEP_WORKLOAD, rate=fraction * own_max,
                                 duration_s=self.options.sweep_duration_s)
                self.load(server, "sweep", spec, fraction=fraction)

    def profile(self, server: servers.Server, model: str, rows: int) -> None:
        """py-spy on the server under a closed-loop load (its figures include the profiler's overhead)."""
        if py_spy() is None:
            print("py-spy is not installed: no profile.", file=sys.stderr)
            return
        spec = self.spec(server, model, rows, duration_s=2 * self.options.profile_s + 4)
        stem = f"profile-{model}-x{rows}"
        result, summary = profile_under_load(spec, server.pid, self.run_dir, stem, record_s=self.options.profile_s,
                                             client_cpus=self.placement.client_cpus)
        self.keep(server, "profiled", spec, result)
        self.profiles.append({"workload": workload_name(model, rows), "server": server.name, **summary})


def run_swap_scenario(options: Options, run_dir: Path, placement: pinning.Pinning) -> dict[str, Any] | None:
    """The swap scenario's results, or None (with the reason printed) if it could not run."""
    return attempt("swap scenario",
                   lambda: swap.scenario(swap.SwapOptions(swaps=options.swaps, encoding=options.encoding), run_dir,
                                         placement),
                   (servers.ServerError, LoadError))


def run(options: Options) -> Path:
    placement = pinning.plan(options.server_cpus, options.client_cpus)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = options.out / stamp
    run_dir.mkdir(parents=True)
    load_start = machine.load_average()
    print(f"bench: results in {run_dir}; load average {load_start}", flush=True)
    if load_start[0] > 1.0:
        print(f"bench: warning: the machine is busy (load average {load_start[0]}); numbers will be noisy.",
              flush=True)
    if placement.warning:
        print(f"bench: warning: {placement.warning}", file=sys.stderr, flush=True)
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine.facts(),
        "load_average_start": load_start,
        "options": {
            "duration_s": options.duration_s, "warmup_s": options.warmup_s, "repeats": options.repeats,
            "sweep_duration_s": options.sweep_duration_s, "connections": options.connections,
            "in_flight": options.in_flight, "processes": options.processes, "encoding": options.encoding,
            "half_load": options.half_load, "sweep": options.sweep, "profile_s": options.profile_s,
            "profile_workloads": [workload_name(*w) for w in options.profile_workloads],
            "servers": options.servers, "workloads": [workload_name(*w) for w in options.workloads],
            "swaps": options.swaps,
        },
        "tuning": servers.tuning(),
        "pinning": placement.as_dict(),
    }
    comparison = Comparison(options, run_dir, placement)
    scratch = Path(tempfile.mkdtemp(prefix="bench-data-"))
    try:
        started = time.monotonic()
        prepared = servers.prepare_data(scratch)
        print(f"bench: demo models trained in {time.monotonic() - started:.0f} s", flush=True)
        # Off the servers' cores from here on: the samplers between loads and py-spy run in this process.
        pinning.pin_current_process(placement.client_cpus)
        print(f"bench: {pinning.describe(placement.as_dict())}", flush=True)
        comparison.compare(prepared)
        if options.http:
            results["http"] = http_compare.in_bench(prepared, run_dir, placement)
        if options.swaps:
            swap_results = run_swap_scenario(options, run_dir, placement)
            if swap_results is not None:
                results["swap"] = swap_results
        if options.shadow:
            results["shadow"] = shadow.in_bench(options.encoding, run_dir, placement)
        if options.scaling:
            results["scaling"] = scaling.in_bench(options.encoding, run_dir, placement)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if not options.keep_data:
            shutil.rmtree(run_dir / "data", ignore_errors=True)
    results.update(
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
        load_average_end=machine.load_average(),
        runs=comparison.runs,
        log_checks=comparison.log_checks,
        exit_codes=comparison.exit_codes,
        profiles=comparison.profiles,
    )
    soak = options.out / "latest" / "soak.json"
    if soak.exists():
        results["soak"] = json.loads(soak.read_text())
    results["targets"] = report.targets(results)
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (run_dir / "results.md").write_text(report.markdown(results))
    report.plot_latency_vs_throughput(results, run_dir / "latency_vs_throughput.png")
    latest = options.out / "latest"
    latest.mkdir(exist_ok=True)
    for old in latest.glob("profile*"):
        old.unlink()
    copied = [*LATEST_FILES, *(name for profile in comparison.profiles for name in profile["files"])]
    for name in copied:
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, latest / name)
    print(f"bench: load average at the end {results['load_average_end']}", flush=True)
    print(report.readme_table(results), flush=True)
    return run_dir


def main(argv: list[str] | None = None) -> None:
    defaults = Options()
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=defaults.duration_s, help="measured seconds per load")
    parser.add_argument("--warmup", type=float, default=defaults.warmup_s, help="unmeasured seconds before each")
    parser.add_argument("--repeats", type=int, default=defaults.repeats,
                        help="rounds of the maximum-throughput loads; the best counts")
    parser.add_argument("--sweep-duration", type=float, default=defaults.sweep_duration_s)
    parser.add_argument("--connections", type=int, default=defaults.connections)
    parser.add_argument("--in-flight", type=int, default=defaults.in_flight, help="closed loop, per connection")
    parser.add_argument("--processes", type=int, default=defaults.processes, help="client processes")
    parser.add_argument("--encoding", choices=["json", "msgpack"], default=defaults.encoding)
    parser.add_argument("--sweep", default=",".join(str(f) for f in defaults.sweep),
                        help="open-loop rates for the plot, as fractions of each server's maximum")
    parser.add_argument("--profile", type=float, default=defaults.profile_s,
                        help="seconds of each py-spy recording; 0 for none")
    parser.add_argument("--profile-workloads", default=",".join(f"{m}:{r}" for m, r in defaults.profile_workloads),
                        help="model:rows pairs to profile the platform under")
    parser.add_argument("--servers", default=",".join(defaults.servers))
    parser.add_argument("--workloads", default=",".join(f"{m}:{r}" for m, r in defaults.workloads),
                        help="model:rows pairs, e.g. iris:1,digits:32")
    parser.add_argument("--out", type=Path, default=defaults.out)
    parser.add_argument("--keep-data", action="store_true", help="keep the servers' data directories")
    parser.add_argument("--swaps", type=int, default=defaults.swaps,
                        help="swaps of the swap scenario (bench.swap); 0 leaves it out")
    parser.add_argument("--no-shadow", action="store_true", help="leave out the shadow-cost scenario (bench.shadow)")
    parser.add_argument("--no-scaling", action="store_true", help="leave out the scaling scenario (bench.scaling)")
    parser.add_argument("--no-http", action="store_true",
                        help="leave out the HTTP comparison with MLServer (bench.http_compare)")
    parser.add_argument("--server-cpus", default=defaults.server_cpus,
                        help="CPUs every server and its children run on (taskset -c syntax, e.g. 0 or 0,2); none: any")
    parser.add_argument("--client-cpus", default=defaults.client_cpus,
                        help="CPUs the load generator runs on, apart from the servers'; none: any")
    args = parser.parse_args(argv)
    def pairs(text: str) -> list[tuple[str, int]]:
        parsed = []
        for item in text.split(","):
            if item.strip():
                model, _, rows = item.partition(":")
                parsed.append((model.strip(), int(rows or 1)))
        return parsed

    options = Options(
        duration_s=args.duration, warmup_s=args.warmup, repeats=args.repeats, sweep_duration_s=args.sweep_duration,
        connections=args.connections, in_flight=args.in_flight, processes=args.processes,
        encoding=args.encoding, sweep=[float(f) for f in args.sweep.split(",") if f],
        profile_s=args.profile, servers=[s.strip() for s in args.servers.split(",") if s.strip()],
        workloads=pairs(args.workloads), profile_workloads=pairs(args.profile_workloads), out=args.out,
        keep_data=args.keep_data, server_cpus=args.server_cpus, client_cpus=args.client_cpus, swaps=args.swaps,
        shadow=not args.no_shadow, scaling=not args.no_scaling, http=not args.no_http,
    )
    unknown = set(options.servers) - {name for name, _, _ in SERVERS}
    if unknown:
        parser.error(f"unknown servers {sorted(unknown)}; choose from {[name for name, _, _ in SERVERS]}")
    try:
        run(options)
    except (servers.ServerError, LoadError, pinning.PinningError) as exc:
        sys.exit(f"bench: {exc}")


if __name__ == "__main__":
    main()
