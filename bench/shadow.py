"""The shadow-cost scenario: what a 100% shadow costs the version that answers.

``make bench`` runs it after the swap scenario (``bench.run``); ``python -m
bench.shadow`` runs it alone. One server process (pinned like the rest of the
benchmark) serves iris v1 (a logistic regression, ``C=1``) with v2 (``C=0.01``)
registered staged. After a warm-up load at the maximum, three rounds, each a
closed-loop load at the server's maximum and then an open-loop load at
``fraction`` of the warm-up's rate (where the server has spare CPU):

1. no shadow;
2. v2 as a shadow of every request (``manage.py rollout iris --shadow 2``);
3. no shadow again (``--abort``), so that a drift of the machine shows.

Reported per round: throughput and p99 latency of the answering version, and
for the shadow round the comparisons and dropped copies that its ``/metrics``
counts. Targets: the shadow round keeps at least 90% of the shadow-free
throughput and its p99 within 1.2 times the shadow-free one (the mean of
rounds 1 and 3), at the open-loop rate, where the shadow's model calls have
CPU to spare; at the closed-loop maximum they take their share of the same
core, and the numbers say how much.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import machine, pinning, servers
from .attempt import attempt
from .loadgen import LoadError, LoadSpec, format_line, run_load

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
VERSION_C = (1.0, 0.01)


@dataclass
class ShadowOptions:
    connections: int = 16
    duration_s: float = 6.0
    warmup_s: float = 1.0
    #: The open-loop rate, as a fraction of the shadow-free closed-loop maximum.
    fraction: float = 0.5
    encoding: str = "json"


def _register(env: dict[str, str], scratch: Path) -> None:
    import numpy as np
    import skops.io
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    iris = load_iris()
    labels = np.asarray(iris.target_names)[iris.target]
    for number, c in enumerate(VERSION_C, start=1):
        path = scratch / f"iris-v{number}.skops"
        skops.io.dump(LogisticRegression(C=c, max_iter=2000).fit(iris.data, labels), path)
        servers.manage("register_model", "iris", "--artifact", str(path), "--framework", "sklearn",
                       *(["--activate"] if number == 1 else []), "--task", "classification",
                       "--inputs", ",".join(FEATURES), "--outputs", "label", "--actor", "bench", env=env)


def _wait_loaded(url: str, version: int, loaded: bool, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
            if (f"iris:{version}" in json.loads(response.read())["loaded"]) == loaded:
                return
        time.sleep(0.2)
    raise servers.ServerError(f"iris v{version} was {'not ' if loaded else ''}loaded within {timeout_s:g} s.")


def _shadow_counts(url: str) -> dict[str, float]:
    """The shadow's comparisons and dropped copies, as the server's /metrics counts them."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    counts: dict[str, float] = {"comparisons": 0.0, "dropped": 0.0, "failures": 0.0}
    for name in counts:
        for value in re.findall(rf"^platform_shadow_{name}_total{{[^}}]*}} ([0-9.e+]+)$", text, re.M):
            counts[name] += float(value)
    return counts


def _round(name: str, base: LoadSpec, rate: float, server: servers.Server,
           placement: pinning.Pinning) -> dict[str, Any]:
    """A closed-loop load at the maximum, then an open-loop one at ``rate``."""
    results = {}
    for load, spec in (("maximum", base), ("open_loop", replace(base, rate_per_s=rate))):
        results[load] = run_load(spec, server_pid=server.pid, client_cpus=placement.client_cpus).summary()
        print(f"shadow: {name}, {load.replace('_', ' ')} {format_line(results[load])}", flush=True)
        servers.wait_idle(server.pid)
    return results


def _brief(result: dict[str, Any]) -> dict[str, Any]:
    return {"requests_per_s": round(result["requests_per_s"], 1), "p99_ms": result["latency_ms"]["p99"],
            "errors": result["counts"]["errors"], "unanswered": result["counts"]["unanswered"]}


def scenario(options: ShadowOptions, log_dir: Path, placement: pinning.Pinning) -> dict[str, Any]:
    """Run the shadow-cost scenario once; its results, for ``results.json``."""
    scratch = Path(tempfile.mkdtemp(prefix="bench-shadow-"))
    # Comparisons written every second, as a busy deployment would not, to count their cost in full.
    overrides = {"PLATFORM_SHADOW_FLUSH_S": "1"}
    env = servers.server_env(scratch / "data", overrides)
    server: servers.Server | None = None
    try:
        servers.manage("migrate", "--no-input", env=env)
        _register(env, scratch)
        server = servers.start_server("shadow", "platform", scratch / "data", log_dir, overrides,
                                      cpus=placement.server_cpus)
        base = LoadSpec(url=server.url, model="iris", rows=1, encoding=options.encoding,
                        connections=options.connections, duration_s=options.duration_s, warmup_s=options.warmup_s)
        # A warm-up at the maximum, not counted, sets the open loop's rate.
        warm = run_load(base, server_pid=server.pid, client_cpus=placement.client_cpus).summary()
        servers.wait_idle(server.pid)
        rate = options.fraction * warm["requests_per_s"]
        off = _round("shadow off", base, rate, server, placement)
        servers.manage("rollout", "iris", "--shadow", "2", "--actor", "bench", env=env)
        http = f"http://127.0.0.1:{server.port}"
        _wait_loaded(http, 2, True)
        before = _shadow_counts(http)
        on = _round("shadow on", base, rate, server, placement)
        time.sleep(2.0)  # the last second's comparisons reach the metrics
        after = _shadow_counts(http)
        servers.manage("rollout", "iris", "--abort", "--actor", "bench", env=env)
        _wait_loaded(http, 2, False)
        off_again = _round("shadow off again", base, rate, server, placement)
        return _results(off, on, off_again, {name: after[name] - before[name] for name in after}, rate)
    finally:
        if server is not None:
            try:
                server.stop()
            except servers.ServerError as exc:
                print(f"shadow: {exc}", file=sys.stderr)
        shutil.rmtree(scratch, ignore_errors=True)


def _results(off: dict[str, Any], on: dict[str, Any], off_again: dict[str, Any], shadow: dict[str, float],
             rate: float) -> dict[str, Any]:
    def mean(key: str, load: str) -> float:
        return (_brief(off[load])[key] + _brief(off_again[load])[key]) / 2

    rounds = {name: {load: _brief(result[load]) for load in ("maximum", "open_loop")}
              for name, result in (("off", off), ("on", on), ("off_again", off_again))}
    return {
        "open_loop_rate_per_s": round(rate, 1),
        "rounds": rounds,
        "shadow": shadow,
        "throughput_ratio_at_maximum": round(_brief(on["maximum"])["requests_per_s"] / mean("requests_per_s",
                                                                                              "maximum"), 3),
        "p99_ratio_at_maximum": round(_brief(on["maximum"])["p99_ms"] / mean("p99_ms", "maximum"), 3),
        "throughput_ratio_open_loop": round(_brief(on["open_loop"])["requests_per_s"] / mean("requests_per_s",
                                                                                              "open_loop"), 3),
        "p99_ratio_open_loop": round(_brief(on["open_loop"])["p99_ms"] / mean("p99_ms", "open_loop"), 3),
    }


def summary(results: dict[str, Any]) -> str:
    """The scenario's results as Markdown lines."""
    lines = ["| round | max req/s | max p99 ms | open-loop req/s | open-loop p99 ms |", "|---|---:|---:|---:|---:|"]
    for name, loads in results["rounds"].items():
        lines.append(f"| shadow {name.replace('_', ' ')} | {loads['maximum']['requests_per_s']} | "
                     f"{loads['maximum']['p99_ms']} | {loads['open_loop']['requests_per_s']} | "
                     f"{loads['open_loop']['p99_ms']} |")
    shadow = results["shadow"]
    lines += [
        "",
        f"Open loop at {results['open_loop_rate_per_s']} req/s. With the shadow on: throughput "
        f"{results['throughput_ratio_at_maximum']:.0%} of shadow-free at the maximum, "
        f"{results['throughput_ratio_open_loop']:.0%} in the open loop (target at least 90%); p99 "
        f"{results['p99_ratio_at_maximum']:.2f}x at the maximum, {results['p99_ratio_open_loop']:.2f}x in the "
        f"open loop (target at most 1.2x). The shadow compared {shadow['comparisons']:.0f} requests, dropped "
        f"{shadow['dropped']:.0f} and failed on {shadow['failures']:.0f}.",
    ]
    return "\n".join(lines)


def in_bench(encoding: str, run_dir: Path, placement: pinning.Pinning) -> dict[str, Any] | None:
    """The scenario as ``make bench`` runs it: results (also in ``shadow.md``), or None with the reason printed."""
    results = attempt("shadow-cost scenario", lambda: scenario(ShadowOptions(encoding=encoding), run_dir, placement),
                      (servers.ServerError, LoadError))
    if results is None:
        return None
    (run_dir / "shadow.md").write_text(f"# Shadow-cost scenario\n\n{summary(results)}\n")
    print(summary(results), flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    defaults = ShadowOptions()
    parser = argparse.ArgumentParser(prog="python -m bench.shadow", description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=defaults.connections)
    parser.add_argument("--duration", type=float, default=defaults.duration_s, help="seconds per load")
    parser.add_argument("--out", type=Path, default=servers.REPO_ROOT / "bench-results")
    parser.add_argument("--server-cpus", default=pinning.DEFAULT_SERVER_CPUS)
    parser.add_argument("--client-cpus", default=pinning.DEFAULT_CLIENT_CPUS)
    args = parser.parse_args(argv)
    placement = pinning.plan(args.server_cpus, args.client_cpus)
    run_dir = args.out / f"{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-shadow"
    run_dir.mkdir(parents=True)
    try:
        results = scenario(ShadowOptions(connections=args.connections, duration_s=args.duration), run_dir, placement)
    except servers.ServerError as exc:
        sys.exit(f"shadow: {exc}")
    results.update(machine=machine.facts(), pinning=placement.as_dict())
    (run_dir / "shadow.json").write_text(json.dumps(results, indent=2) + "\n")
    (run_dir / "shadow.md").write_text(f"# Shadow-cost scenario\n\n{summary(results)}\n")
    print(summary(results), flush=True)


if __name__ == "__main__":
    main()
