"""Soak: the platform under a fixed load for minutes, its memory over time and its prediction log checked.

``make soak`` runs it (``SOAK_MINUTES``, default 5). It starts the platform
with monitoring on, measures its maximum throughput with a short closed loop,
then sends an open-loop load at a fraction of it (default half) for the whole
soak while sampling the server's RSS (with its log writer process) from /proc every few seconds. The server
is then stopped with SIGTERM, which answers what is in flight and flushes
the prediction log, and the log (table ``monitoring_predictionrecord`` of
the server's SQLite database) is compared with every request the clients saw
answered, prediction or error: each must be there exactly once.

As in ``make bench``, the server runs on ``--server-cpus`` (default CPU 0,
under ``taskset``, its log writer included) and the load generator on
``--client-cpus`` (default CPU 1).

RSS growth is judged after warm-up: the median of the samples in the 30 s
after warm-up against the median of the last 30 s.

Results go to ``bench-results/<timestamp>-soak/`` (``soak.json``,
``soak.md``, ``soak_rss.png``) and are copied to ``bench-results/latest/``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from . import machine, pinning, procstats, servers
from .loadgen import LoadError, LoadResult, LoadSpec, clock, format_line, run_load
from .report import SOAK_RSS_GROWTH_MAX, soak_summary
from .run import RESULTS_ROOT

#: Seconds at the start and at the end whose RSS samples are compared.
RSS_WINDOW_S = 30.0


class RssSampler(threading.Thread):
    """Samples a process's RSS every ``interval_s`` until stopped: (seconds since start, MiB)."""

    def __init__(self, pid: int, interval_s: float) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []
        self.started_at = clock()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.samples.append((clock() - self.started_at, procstats.tree_rss_mb(self.pid)))
            except OSError:  # the process is gone
                return
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def rss_growth(samples: list[tuple[float, float]], warmup_s: float) -> dict[str, Any]:
    """RSS after warm-up against RSS at the end, with the peak and the trend."""
    t = np.array([s[0] for s in samples])
    mb = np.array([s[1] for s in samples])
    after = t >= warmup_s
    result: dict[str, Any] = {"warmup_s": warmup_s, "samples": len(samples), "baseline_mb": None,
                              "final_mb": None, "growth": None, "peak_mb": None, "slope_mb_per_min": None}
    if after.sum() < 2:
        return result
    baseline = mb[after & (t < warmup_s + RSS_WINDOW_S)]
    final = mb[t >= t[-1] - RSS_WINDOW_S]
    slope = np.polyfit(t[after] / 60.0, mb[after], 1)[0] if after.sum() >= 3 else 0.0
    result.update(
        baseline_mb=float(np.median(baseline)),
        final_mb=float(np.median(final)),
        peak_mb=float(mb[after].max()),
        slope_mb_per_min=float(slope),
    )
    result["growth"] = result["final_mb"] / result["baseline_mb"] - 1.0
    return result


def timeline(result: LoadResult, bucket_s: float) -> list[dict[str, Any]]:
    """Requests answered and their latency per ``bucket_s`` of the run (by scheduled send time)."""
    rows = []
    begin = result.start
    end = result.start + result.spec.warmup_s + result.spec.duration_s
    ok = result.codes == "ok"
    latency = (result.done_at - result.sent_at) * 1000.0
    edge = begin
    while edge < end - 1e-9:
        mask = (result.sent_at >= edge) & (result.sent_at < edge + bucket_s)
        good = latency[mask & ok]
        rows.append({
            "t_s": round(edge - begin, 1),
            "requests_per_s": round(float(good.size) / bucket_s, 1),
            "errors": int((mask & ~ok).sum()),
            "p50_ms": round(float(np.percentile(good, 50)), 3) if good.size else None,
            "p99_ms": round(float(np.percentile(good, 99)), 3) if good.size else None,
        })
        edge += bucket_s
    return rows


def plot(soak: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (rss_axes, load_axes) = plt.subplots(2, 1, figsize=(8, 6), dpi=120, sharex=True)
    t = [s[0] for s in soak["rss"]["series"]]
    rss_axes.plot(t, [s[1] for s in soak["rss"]["series"]], "-", color="C0")
    rss_axes.axvline(soak["rss"]["warmup_s"], color="grey", linestyle=":", linewidth=0.8)
    if soak["rss"]["baseline_mb"]:
        rss_axes.axhline(soak["rss"]["baseline_mb"] * (1 + SOAK_RSS_GROWTH_MAX), color="C3", linestyle=":",
                         linewidth=0.8, label="baseline + 5%")
        rss_axes.legend(fontsize=8)
    rss_axes.set_ylabel("server RSS (MiB)")
    rss_axes.grid(True, alpha=0.3)
    # The load's clock starts after the RSS sampler's: shift it to the same axis.
    offset = soak["load_offset_s"]
    rows = soak["timeline"]
    load_axes.plot([r["t_s"] + offset for r in rows], [r["requests_per_s"] for r in rows], color="C1")
    load_axes.set_ylabel("answered req/s", color="C1")
    load_axes.set_ylim(0, 1.2 * max((r["requests_per_s"] for r in rows), default=1))
    p99 = load_axes.twinx()
    p99.plot([r["t_s"] + offset for r in rows], [r["p99_ms"] for r in rows], color="C2")
    p99.set_ylabel("p99 latency (ms)", color="C2")
    p99.set_yscale("log")
    load_axes.set_xlabel("seconds since RSS sampling started")
    load_axes.grid(True, alpha=0.3)
    figure.suptitle(f"{soak['minutes']:g}-minute soak, {soak['workload']} at {soak['rate_per_s']:.0f} req/s",
                    fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def markdown(soak: dict[str, Any]) -> str:
    verdict_rss = soak["rss"]["growth"] is not None and soak["rss"]["growth"] < SOAK_RSS_GROWTH_MAX
    verdict_log = soak["log_check"]["exact"]
    return "\n".join([
        "# Soak results\n",
        f"On {machine.describe(soak['machine'])}, commit {soak['machine']['git_commit']}. "
        f"{pinning.describe(soak.get('pinning'))}\n",
        soak_summary(soak),
        "| target | result | verdict |",
        "| --- | --- | --- |",
        f"| RSS grows < 5% after warm-up | {soak['rss']['growth']:+.1%} | {'pass' if verdict_rss else '**FAIL**'} |",
        f"| no prediction record missing | {soak['log_check']['missing']} missing, {soak['log_check']['duplicates']} "
        f"duplicated, {soak['log_check']['unexpected']} unexpected | {'pass' if verdict_log else '**FAIL**'} |",
        "",
        "![RSS and load over time](soak_rss.png)\n",
    ])


def soak(minutes: float, *, model: str, rows: int, fraction: float, sample_s: float, warmup_s: float,
         connections: int, in_flight: int, processes: int, encoding: str, out: Path, rate: float | None,
         placement: pinning.Pinning) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = out / f"{stamp}-soak"
    run_dir.mkdir(parents=True)
    load_start = machine.load_average()
    facts = machine.facts()
    print(f"soak: results in {run_dir}; load average {load_start}", flush=True)
    if placement.warning:
        print(f"soak: warning: {placement.warning}", file=sys.stderr, flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    answered: list[str] = []
    try:
        prepared = servers.prepare_data(scratch)
        data_dir = servers.copy_data(prepared, scratch / "platform")
        # Off the server's cores from here on: the RSS sampler runs in this process.
        pinning.pin_current_process(placement.client_cpus)
        server = servers.start_server("platform-soak", "platform", data_dir, run_dir, cpus=placement.server_cpus)
        print(f"soak: {pinning.describe(placement.as_dict())}", flush=True)
        try:
            base = LoadSpec(url=server.url, model=model, rows=rows, encoding=encoding, connections=connections,
                            processes=processes, in_flight=in_flight)
            measured = run_load(replace(base, duration_s=10.0, warmup_s=3.0, id_base=10**13),
                                server_pid=server.pid, client_cpus=placement.client_cpus)
            answered += [str(i) for i in measured.answered_ids().tolist()]
            max_rps = measured.summary()["requests_per_s"]
            print(f"soak: maximum {format_line(measured.summary())}", flush=True)
            servers.wait_idle(server.pid)
            target = rate or fraction * max_rps
            total_s = minutes * 60.0
            warmup_s = min(warmup_s, total_s / 2)
            sampler = RssSampler(server.pid, sample_s)
            sampler.start()
            try:
                # The whole soak is one open loop: its warm-up is the RSS warm-up.
                spec = replace(base, rate_per_s=target, warmup_s=warmup_s, duration_s=total_s - warmup_s,
                               id_base=2 * 10**13)
                result = run_load(spec, server_pid=server.pid, client_cpus=placement.client_cpus)
            finally:
                sampler.stop()
            answered += [str(i) for i in result.answered_ids().tolist()]
            summary = result.summary()
            print(f"soak: {format_line(summary)}", flush=True)
        finally:
            code = server.stop()
        check = servers.check_prediction_log(data_dir, answered).as_dict()
        print(f"soak: server exited with {code}; prediction log {check}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rss = rss_growth(sampler.samples, warmup_s)
    rss["series"] = [(round(t, 2), round(mb, 2)) for t, mb in sampler.samples]
    results = {
        "started_at": stamp,
        "machine": facts,
        "load_average_start": load_start,
        "load_average_end": machine.load_average(),
        "minutes": minutes,
        "workload": f"{model} x{rows}",
        "fraction": fraction if rate is None else target / max_rps,
        "max_requests_per_s": max_rps,
        "rate_per_s": target,
        "load": summary,
        "load_offset_s": round(result.start - sampler.started_at, 2),
        "timeline": timeline(result, 10.0),
        "rss": rss,
        "log_check": check,
        "server_exit_code": code,
        "tuning": servers.tuning(),
        "pinning": placement.as_dict(),
    }
    (run_dir / "soak.json").write_text(json.dumps(results, indent=2) + "\n")
    (run_dir / "soak.md").write_text(markdown(results))
    plot(results, run_dir / "soak_rss.png")
    latest = out / "latest"
    latest.mkdir(exist_ok=True)
    for name in ("soak.json", "soak.md", "soak_rss.png"):
        shutil.copy2(run_dir / name, latest / name)
    print(markdown(results), flush=True)
    return run_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--model", default="iris")
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--fraction", type=float, default=0.5, help="of the measured maximum throughput")
    parser.add_argument("--rate", type=float, default=None, help="requests per second, instead of --fraction")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before RSS growth is judged")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--in-flight", type=int, default=8, help="for the maximum-throughput measurement")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--encoding", choices=["json", "msgpack"], default="json")
    parser.add_argument("--out", type=Path, default=RESULTS_ROOT)
    parser.add_argument("--server-cpus", default=pinning.DEFAULT_SERVER_CPUS,
                        help="CPUs the platform and its log writer run on (taskset -c syntax); none: any")
    parser.add_argument("--client-cpus", default=pinning.DEFAULT_CLIENT_CPUS,
                        help="CPUs the load generator runs on, apart from the server's; none: any")
    args = parser.parse_args(argv)
    try:
        placement = pinning.plan(args.server_cpus, args.client_cpus)
    except pinning.PinningError as exc:
        parser.error(str(exc))
    try:
        soak(args.minutes, model=args.model, rows=args.rows, fraction=args.fraction, sample_s=args.sample,
             warmup_s=args.warmup, connections=args.connections, in_flight=args.in_flight,
             processes=args.processes, encoding=args.encoding, out=args.out, rate=args.rate, placement=placement)
    except (servers.ServerError, LoadError) as exc:
        sys.exit(f"soak: {exc}")


if __name__ == "__main__":
    main()
