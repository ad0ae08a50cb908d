"""Results of a comparison as Markdown tables, target verdicts and a latency-vs-throughput plot."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import pinning
from .machine import describe
from .targets import (
    HALF_LOAD_P99_MAX_MS,
    SERVER_LABELS,
    SOAK_RSS_GROWTH_MAX,
    find,
    targets,
    transport_ceiling,
    workloads,
)

__all__ = ["find", "targets", "transport_ceiling", "workloads", "SOAK_RSS_GROWTH_MAX"]

SERVER_ORDER = [
    "ceiling", "ceiling-nocleanup", "ceiling-direct", "platform", "platform-nomon", "platform-nojournal", "naive",
]


# -- Markdown ---------------------------------------------------------------------------------------


def _n(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _errors(errors: dict[str, int]) -> str:
    return ", ".join(f"{code} {n}" for code, n in errors.items()) or "0"


def _table(header: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def cpu_placement(results: dict[str, Any]) -> str:
    """Where servers and client were meant to run, and the CPUs their processes were seen allowed on."""
    runs = results.get("runs", [])
    seen_server = {cpu for run in runs for cpu in run.get("server_cpus") or ()}
    seen_client = {cpu for run in runs for cpu in run.get("client_cpus") or ()}
    sentence = pinning.describe(results.get("pinning"))
    if runs and seen_server and seen_client:
        sentence += (f" Read from /proc at the end of each load: server processes allowed on CPU "
                     f"{pinning.format_cpu_list(seen_server)}, client processes on CPU "
                     f"{pinning.format_cpu_list(seen_client)}, over all loads.")
    return sentence


def _servers(results: dict[str, Any]) -> list[str]:
    present = {run["server"] for run in results.get("runs", [])}
    return [s for s in SERVER_ORDER if s in present]


def comparison_table(results: dict[str, Any]) -> str:
    """Requests per second at maximum load, side by side, with the ratios the targets are about."""
    rows = []
    for workload in workloads(results):
        get = {s: find(results, s, "max", workload) for s in SERVER_ORDER}
        rps = {s: (r["requests_per_s"] if r else None) for s, r in get.items()}
        ceiling = transport_ceiling(results, workload)
        ceiling_rps = ceiling["requests_per_s"] if ceiling else None
        share = rps["platform"] / ceiling_rps if rps["platform"] and ceiling_rps else None
        direct_share = rps["platform"] / rps["ceiling-direct"] if rps["platform"] and rps["ceiling-direct"] else None
        cost = 1 - rps["platform"] / rps["platform-nomon"] if rps["platform"] and rps["platform-nomon"] else None
        speedup = rps["platform"] / rps["naive"] if rps["platform"] and rps["naive"] else None
        half = find(results, "platform", "half", workload)
        platform = get["platform"]
        rows.append([
            workload,
            f"{_n(rps['ceiling'])} / {_n(rps['ceiling-nocleanup'])} / {_n(rps['ceiling-direct'])}",
            _n(rps["platform"]) + (f" ({_n(platform['rows_per_s'])} rows/s)" if platform else ""),
            "-" if share is None else f"{share:.0%}",
            "-" if direct_share is None else f"{direct_share:.0%}",
            _n(rps["platform-nomon"]),
            "-" if cost is None else f"{cost:+.1%}",
            _n(rps["naive"], 1),
            "-" if speedup is None else f"{speedup:,.1f}x",
            _ms(half["latency_ms"]["p99"]) if half else "-",
        ])
    return _table(
        ["workload", "ceiling req/s (stock consumer / no per-frame DB cleanup / direct)", "platform req/s",
         "platform ÷ faster Channels ceiling", "platform ÷ direct ceiling", "platform, monitoring off",
         "monitoring cost", "naive req/s", "platform ÷ naive", "platform p99 at half load (ms)"],
        rows,
    )


def readme_table(results: dict[str, Any]) -> str:
    """The table for the README: the comparison and the machine it ran on."""
    machine = results["machine"]
    load = results.get("load_average_start", ["?"])[0]
    options = results["options"]
    return (
        f"Measured by `make bench` on {describe(machine)} (load average {load} at the start), one daphne "
        f"process, client and server on the same machine. {pinning.describe(results.get('pinning'))} Closed "
        f"loop with {options['connections']} connections x {options['in_flight']} requests in flight, "
        f"{options['encoding'].upper()} frames, {options['duration_s']:g} s per load. "
        "Details: [docs/benchmarks.md](docs/benchmarks.md).\n\n"
        + comparison_table(results)
    )


def markdown(results: dict[str, Any]) -> str:
    machine, options = results["machine"], results["options"]
    parts = [
        "# Benchmark results\n",
        f"Run {results['started_at']} – {results.get('finished_at', '?')} on {describe(machine)}, kernel "
        f"{machine['kernel']}, commit {machine['git_commit']}"
        f"{' (with local changes)' if machine['git_dirty'] else ''}. "
        f"Load average {results['load_average_start']} at the start, {results.get('load_average_end')} at the end.\n",
        f"Loads: {options['connections']} connections; closed loop with {options['in_flight']} requests in flight "
        f"per connection; {options['encoding'].upper()} frames; {options['processes']} client process(es); "
        f"{options['warmup_s']:g} s warm-up then {options['duration_s']:g} s measured "
        f"({options['sweep_duration_s']:g} s for sweep points). {cpu_placement(results)} "
        f"Batcher tuning from the environment: {results.get('tuning') or 'defaults'}.\n",
        "## Summary\n",
        comparison_table(results),
        "## Targets\n",
        _table(
            ["target", "workload", "result", "verdict"],
            [[t["target"], t["workload"], t["result"], t["verdict"]] for t in results.get("targets", [])],
        ),
        "## Maximum throughput (closed loop)\n",
        f"The servers took turns, {options.get('repeats', 1)} rounds per workload; the best round is shown "
        "with its latency and batch sizes. Latency here is what a client sees with every connection's "
        "pipeline full: it measures queueing at saturation, not service time. Batch rows: the size of the "
        "model call that served the average request (the replies' `batch_size`). CPU: cores used over "
        "the window, server (all its threads and its log writer process) and client (all its processes); "
        "server µs/req: the server's CPU time over the window per request answered with a prediction.\n",
        _table(
            ["workload", "server", "req/s (best round)", "rounds req/s", "rows/s", "p50 ms", "p95 ms", "p99 ms",
             "max ms", "batch rows mean / p99 / max", "errors", "server CPU", "server µs/req", "client CPU"],
            [_run_row(run, with_workload=True) for workload in workloads(results)
             for server in _servers(results) if (run := find(results, server, "max", workload))],
        ),
        "## Latency at half the platform's maximum (open loop)\n",
        "Requests are sent on a fixed schedule at half the rate the platform reached above; latency is "
        "measured from each request's scheduled send time. The ceiling gets the same rates for reference.\n",
        _table(
            ["workload", "server", "target req/s", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms",
             "errors", "server µs/req", "client send lag p99 ms"],
            [
                [run["workload"], SERVER_LABELS[run["server"]], _n(run["target_rate_per_s"]),
                 _n(run["requests_per_s"]), _ms(run["latency_ms"]["p50"]), _ms(run["latency_ms"]["p95"]),
                 _ms(run["latency_ms"]["p99"]), _ms(run["latency_ms"]["max"]), _errors(run["window"]["errors"]),
                 _us(run.get("server_cpu_us_per_request")), _ms(run["send_lag_ms"]["p99"])]
                for workload in workloads(results) for server in _servers(results)
                if (run := find(results, server, "half", workload))
            ],
        ),
        "## Latency vs throughput (iris, 1 row, open loop)\n",
        "![p50 and p99 latency against throughput](latency_vs_throughput.png)\n",
        _table(
            ["server", "target req/s", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors", "server µs/req"],
            [
                [SERVER_LABELS[run["server"]], _n(run["target_rate_per_s"]), _n(run["requests_per_s"]),
                 _ms(run["latency_ms"]["p50"]), _ms(run["latency_ms"]["p95"]), _ms(run["latency_ms"]["p99"]),
                 _ms(run["latency_ms"]["max"]), _errors(run["window"]["errors"]),
                 _us(run.get("server_cpu_us_per_request"))]
                for server in _servers(results) for run in results["runs"]
                if run["server"] == server and run["kind"] == "sweep"
            ],
        ),
    ]
    log = (results.get("log_checks") or {}).get("platform")
    if log:
        parts += [
            "## Prediction log\n",
            f"After the platform was stopped with SIGTERM, its SQLite prediction log held {log['records']:,} "
            f"records ({log['distinct_records']:,} distinct request ids) for {log['answered']:,} requests "
            f"its clients saw answered: {log['missing']} missing, {log['duplicates']} duplicated, "
            f"{log['unexpected']} not answered; {log['spill_lines']} records left in spill files.\n",
        ]
    for profile in results.get("profiles") or []:
        per_core = profile["rate_hz"] * profile["seconds"]
        raw, svg, _, top = profile["files"]
        parts += [
            f"## Where the platform's time goes ({profile['workload']}, maximum load)\n",
            f"py-spy `--gil`, {profile['rate_hz']} Hz for {profile['seconds']:g} s: every sample is taken from "
            "the thread holding the GIL, so a share is a share of the interpreter's time, and a thread's "
            "\"GIL held\" is the fraction of wall time it held it (native work with the GIL released, such "
            "as SQLite stepping or TensorFlow kernels, is not counted). Flame graph of all running threads: "
            f"`{svg}`; raw stacks: `{raw}`; longer lists: `{top}`.\n",
            _table(["thread", "share of samples", "GIL held"],
                   [[t["function"], f"{t['percent']:.1f}%", f"{t['samples'] / per_core:.2f}"]
                    for t in profile["threads"]]),
            "Functions by own time (the frame that was running):\n",
            _table(["function", "share"],
                   [[f"`{t['function']}`", f"{t['percent']:.1f}%"] for t in profile["top_own"][:15]]),
            "Functions by inclusive time (running or calling):\n",
            _table(["function", "share"],
                   [[f"`{t['function']}`", f"{t['percent']:.1f}%"] for t in profile["top_inclusive"][:20]]),
        ]
    http = results.get("http")
    if http:
        from .http_compare import summary as http_summary

        parts += ["## Open Inference Protocol over HTTP, against MLServer\n", http_summary(http)]
    swap = results.get("swap")
    if swap:
        parts += ["## Model swaps at half load\n", swap_summary(swap)]
    soak = results.get("soak")
    if soak:
        parts += ["## Latest soak\n", soak_summary(soak)]
    return "\n".join(parts)


def _run_row(run: dict[str, Any], *, with_workload: bool) -> list[str]:
    lat, batch = run["latency_ms"], run["batch_size"]
    row = [run["workload"]] if with_workload else []
    return row + [
        SERVER_LABELS[run["server"]], _n(run["requests_per_s"], 1 if run["requests_per_s"] < 100 else 0),
        " / ".join(_n(r, 1 if r < 100 else 0) for r in run.get("rounds_requests_per_s", [])),
        _n(run["rows_per_s"]), _ms(lat["p50"]), _ms(lat["p95"]), _ms(lat["p99"]), _ms(lat["max"]),
        f"{batch['mean']} / {batch['p99']} / {batch['max']}", _errors(run["window"]["errors"]),
        _n(run["server_cpu_cores"], 2), _us(run.get("server_cpu_us_per_request")), _n(run["client_cpu_cores"], 2),
    ]


def soak_summary(soak: dict[str, Any]) -> str:
    rss, check, load = soak["rss"], soak["log_check"], soak["load"]
    return (
        f"{soak['minutes']:g} minutes of {soak['workload']} at {soak['rate_per_s']:.0f} req/s "
        f"({soak['fraction']:.0%} of the {soak['max_requests_per_s']:.0f} req/s measured first), run "
        f"{soak['started_at']}, load average {soak['load_average_start']} -> {soak['load_average_end']}. "
        f"Answered {load['requests_per_s']:.0f} req/s, p50 {_ms(load['latency_ms']['p50'])} ms, p99 "
        f"{_ms(load['latency_ms']['p99'])} ms, max {_ms(load['latency_ms']['max'])} ms, errors "
        f"{_errors(load['window']['errors'])}. RSS after {rss['warmup_s']:g} s of warm-up "
        f"{rss['baseline_mb']:.1f} MiB, at the end {rss['final_mb']:.1f} MiB ({rss['growth']:+.1%}; peak "
        f"{rss['peak_mb']:.1f} MiB, trend {rss['slope_mb_per_min']:+.2f} MiB/min). Prediction log: "
        f"{check['records']:,} records for {check['answered']:,} answered requests, {check['missing']} missing, "
        f"{check['duplicates']} duplicated.\n"
    )


def swap_summary(swap: dict[str, Any]) -> str:
    """The swap scenario (``bench.swap``): what ran, and what the clients and the processes showed."""
    convergence, rss = swap["convergence_s"], swap["rss_mb"]
    return (
        f"{swap['processes']} server processes, {swap['channel_layer']} channel layer; iris 1-row requests in an "
        f"open loop at {swap['rate_per_s']:.0f} req/s (half the {swap['max_requests_per_s']:.0f} req/s one "
        f"process reached), {swap['swaps']} swaps {swap['interval_s']:g} s apart (a newly registered version "
        f"activated, then rolled back, in turn). \"During a swap\": requests sent within {swap['window_s']:g} s "
        "after its commit; convergence: from the commit until each process's probe connection was sent the "
        "new catalog.\n\n"
        + _table(
            ["requests", "errors", "p50 / p99 steady ms", "p50 / p99 during swaps ms",
             "commit -> every process s (median / max)", "RSS before -> after MiB", "loaded at the end",
             "one model MiB"],
            [[f"{swap['requests']:,}", _errors(swap["errors"]),
              f"{_ms(swap['p50_steady_ms'])} / {_ms(swap['p99_steady_ms'])}",
              f"{_ms(swap['p50_swap_ms'])} / {_ms(swap['p99_swap_ms'])}",
              "-" if convergence["max"] is None else f"{convergence['median']:.3f} / {convergence['max']:.3f}",
              ", ".join(f"{b:.1f} -> {a:.1f}" for b, a in zip(rss["before"], rss["after"], strict=True)),
              "; ".join(", ".join(loaded) for loaded in swap["loaded_versions_after"]), f"{swap['model_mb']:.3f}"]],
        )
    )


# -- the plot ---------------------------------------------------------------------------------------


def plot_latency_vs_throughput(results: dict[str, Any], path: Path) -> None:
    """p50 (dashed) and p99 (solid) latency against achieved throughput, one colour per server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5), dpi=120)
    for index, server in enumerate(_servers(results)):
        runs = sorted(
            (r for r in results["runs"] if r["server"] == server and r["kind"] == "sweep"
             and r["latency_ms"]["p99"] is not None),
            key=lambda r: r["requests_per_s"],
        )
        if not runs:
            continue
        colour = f"C{index}"
        x = [r["requests_per_s"] for r in runs]
        axes.plot(x, [r["latency_ms"]["p99"] for r in runs], "o-", color=colour, label=f"{SERVER_LABELS[server]} p99")
        axes.plot(x, [r["latency_ms"]["p50"] for r in runs], "x--", color=colour, alpha=0.7,
                  label=f"{SERVER_LABELS[server]} p50")
    axes.axhline(HALF_LOAD_P99_MAX_MS, color="grey", linewidth=0.8, linestyle=":")
    axes.text(axes.get_xlim()[0], HALF_LOAD_P99_MAX_MS * 1.05, " 15 ms target", color="grey", fontsize=8)
    axes.set_yscale("log")
    axes.set_xlabel("throughput (requests/s answered)")
    axes.set_ylabel("latency from scheduled send (ms)")
    axes.set_title(f"iris, 1 row per request, open loop — {describe(results['machine'])}", fontsize=9)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    """Rewrite ``results.md`` and the plot next to a ``results.json``, with a ``soak.json`` beside it if any."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m bench.report", description=main.__doc__)
    parser.add_argument("results", type=Path, help="a results.json written by bench.run")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    soak = args.results.parent / "soak.json"
    if soak.exists():
        results["soak"] = json.loads(soak.read_text())
    results["targets"] = targets(results)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    (args.results.parent / "results.md").write_text(markdown(results))
    plot_latency_vs_throughput(results, args.results.parent / "latency_vs_throughput.png")
    print(readme_table(results))


if __name__ == "__main__":
    main()
