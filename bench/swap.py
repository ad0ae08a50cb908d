"""The swap scenario: model versions activated and rolled back while the platform serves half its load.

``make bench`` runs it after the comparison (``bench.run``); ``python -m
bench.swap`` runs it alone. Two server processes share one data directory
(SQLite) and, where a ``redis-server`` binary is found, one throwaway Redis
(without it, the in-memory channel layer: a change reaches the processes by
their periodic reconcile alone, and the results say so). Clients send iris
1-row requests in an open loop at half the maximum the first process reached
in a short closed loop, split over the processes, while a driver process (Django on the
same data directory, ``inference.deployment``) makes ten swaps: it activates a
newly registered retrained iris (registered staged before the load), rolls
back, activates the next one, rolls back, and so on. Reported:

- errors, over every request of the load (target 0);
- p99 latency of requests sent within ``window_s`` after a commit, against
  the rest of the measurement window (target: at most twice as long);
- the time from each commit until every process serves the new version: each
  process has an idle probe connection, and the ``models`` message it is sent
  unasked marks the moment its pool swapped;
- the RSS of the server processes (without their log writers) before the
  first swap and after the tenth, both under the same load (target: no
  growth beyond one model's size), and the versions each process keeps loaded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from . import machine, pinning, servers
from .loadgen import LoadResult, LoadSpec, clock, format_line, run_load

#: The retrained iris classifiers: one ``C`` per version, so that their outputs differ.
VERSION_C = (1.0, 0.01, 0.1, 10.0, 100.0, 0.3, 3.0, 30.0, 0.03, 300.0, 0.003)
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
RSS_SAMPLES, RSS_SAMPLE_INTERVAL_S = 5, 0.2


@dataclass
class SwapOptions:
    swaps: int = 10
    processes: int = 2
    connections: int = 16
    fraction: float = 0.5
    warmup_s: float = 2.0
    steady_s: float = 4.0
    interval_s: float = 2.0
    tail_s: float = 2.0
    #: Requests sent this long after a commit count as "during the swap".
    window_s: float = 1.0
    max_duration_s: float = 4.0
    encoding: str = "json"


# -- the driver: registry changes from a Django process of their own ---------------------------------


class Driver:
    """``python -m bench.swap --driver``: one JSON request per line in, one JSON answer per line out."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.swap", "--driver"], cwd=servers.REPO_ROOT, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )

    def ask(self, **request: Any) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        answer = json.loads(self.process.stdout.readline() or '{"error": "the driver exited"}')
        if "error" in answer:
            raise servers.ServerError(f"The swap driver could not {request['op']}: {answer['error']}")
        return answer

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def drive() -> None:
    """The driver's side: register, activate and roll back iris versions as asked on stdin."""
    import django

    django.setup()
    import skops.io
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from inference import deployment
    from inference.models import DeploymentEvent

    iris = load_iris()
    labels = np.asarray(iris.target_names)[iris.target]
    scratch = Path(tempfile.mkdtemp(prefix="bench-swap-driver-"))
    who = {"actor": "bench", "source": "command"}
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["op"] == "register":
                path = scratch / f"iris-{request['c']}.skops"
                skops.io.dump(LogisticRegression(C=request["c"], max_iter=2000).fit(iris.data, labels), path)
                schema = deployment.ModelSchema(task="classification", inputs=FEATURES, outputs="label")
                version = deployment.register("iris", path, "sklearn", activate=request["activate"],
                                              schema=schema, **who)
            elif request["op"] == "activate":
                version = deployment.activate("iris", request["version"], **who)
            else:
                version = deployment.rollback("iris", **who)
            event = DeploymentEvent.objects.filter(version=version).order_by("-id").first()
            answer = {"version": version.version, "size_bytes": version.size_bytes,
                      # Recorded in the change's transaction, just before its commit.
                      "committed_at": event.at.timestamp() if event else time.time()}
        except Exception as exc:
            answer = {"error": str(exc)}
        print(json.dumps(answer), flush=True)
    shutil.rmtree(scratch, ignore_errors=True)


# -- what the clients see ------------------------------------------------------------------------------


@dataclass
class Probe:
    """An idle connection to one process: when it was told which catalog."""

    url: str
    told: list[tuple[float, int]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> threading.Thread:
        """Connect, wait for ``ready``, then listen in a thread of its own until :attr:`stop` is set."""
        ready = threading.Event()
        failed: list[BaseException] = []

        def listen() -> None:
            from websockets.sync.client import connect

            try:
                with connect(self.url, open_timeout=10) as connection:
                    if json.loads(connection.recv(timeout=10))["type"] != "ready":
                        raise servers.ServerError(f"{self.url} did not send its ready message.")
                    ready.set()
                    while not self.stop.is_set():
                        try:
                            message = json.loads(connection.recv(timeout=0.2))
                        except TimeoutError:
                            continue
                        if message.get("type") == "models":
                            self.told.append((time.time(), message["models"]["iris"]["version"]))
            except Exception as exc:
                failed.append(exc)
                ready.set()

        thread = threading.Thread(target=listen, name="swap-probe", daemon=True)
        thread.start()
        if not ready.wait(30) or failed:
            reason = failed[0] if failed else "no ready message within 30 s"
            raise servers.ServerError(f"The probe connection to {self.url} failed: {reason}")
        return thread

    def told_at(self, version: int, after: float) -> float | None:
        return next((at for at, told in self.told if told == version and at >= after), None)


class RedisServer:
    """A throwaway redis-server on a free port, for the channel layer of the scenario's servers."""

    def __init__(self) -> None:
        self.port = servers.free_port()
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise servers.ServerError("redis-server did not answer within 10 s.") from None
                time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def process_rss_mb(pid: int) -> float:
    """The resident set of one process, in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def rss_mb(pids: list[int]) -> list[float]:
    """Each server process's RSS, the median of a few samples.

    The server process alone, where the pool and its models live: its log
    writer child grows for its first minute under any load, swaps or not (the
    soak covers it).
    """
    samples: list[list[float]] = [[] for _ in pids]
    for _ in range(RSS_SAMPLES):
        for index, pid in enumerate(pids):
            samples[index].append(process_rss_mb(pid))
        time.sleep(RSS_SAMPLE_INTERVAL_S)
    return [round(statistics.median(values), 2) for values in samples]


def loaded_versions(server: servers.Server) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as response:
        return sorted(json.loads(response.read())["loaded"])


def p_ms(latencies_s: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(latencies_s, q)) * 1000.0, 3) if latencies_s.size else None


def latency_split(results: list[LoadResult], commits_mono: list[float], window_s: float) -> dict[str, Any]:
    """p50/p99 of the requests sent within ``window_s`` of a commit, and of the rest of the window."""
    during, steady = [], []
    for result in results:
        begin, end = result.window
        measured = (result.sent_at >= begin) & (result.sent_at < end) & (result.codes == "ok")
        near = np.zeros(result.sent_at.shape, dtype=bool)
        for commit in commits_mono:
            near |= (result.sent_at >= commit) & (result.sent_at < commit + window_s)
        latency = result.done_at - result.sent_at
        during.append(latency[measured & near])
        steady.append(latency[measured & ~near])
    swap, calm = np.concatenate(during), np.concatenate(steady)
    return {"swap_requests": int(swap.size), "steady_requests": int(calm.size),
            "p50_swap_ms": p_ms(swap, 50), "p99_swap_ms": p_ms(swap, 99),
            "p50_steady_ms": p_ms(calm, 50), "p99_steady_ms": p_ms(calm, 99)}


# -- the scenario --------------------------------------------------------------------------------------


def scenario(options: SwapOptions, log_dir: Path, placement: pinning.Pinning) -> dict[str, Any]:
    """Run the swap scenario once; its results, for ``results.json``."""
    if options.swaps > 2 * (len(VERSION_C) - 1):
        raise ValueError(f"At most {2 * (len(VERSION_C) - 1)} swaps are prepared, not {options.swaps}.")
    scratch = Path(tempfile.mkdtemp(prefix="bench-swap-"))
    redis = RedisServer() if shutil.which("redis-server") else None
    overrides = {"REDIS_URL": redis.url} if redis is not None else {}
    env = servers.server_env(scratch / "data", overrides)
    started: list[servers.Server] = []
    driver: Driver | None = None
    try:
        servers.manage("migrate", "--no-input", env=env)
        driver = Driver(env)
        first = driver.ask(op="register", c=VERSION_C[0], activate=True)
        # Every new version is registered (validated, stored) before the load: the swaps are activations.
        staged = [driver.ask(op="register", c=c, activate=False)["version"]
                  for c in VERSION_C[1:1 + (options.swaps + 1) // 2]]
        for index in range(options.processes):
            started.append(servers.start_server(f"swap-{index}", "platform", scratch / "data", log_dir, overrides,
                                                cpus=placement.server_cpus))
        results = _under_load(options, started, driver, staged, placement)
        results.update(channel_layer="redis" if redis is not None else "in-memory (periodic reconcile only)",
                       model_mb=round(first["size_bytes"] / 2**20, 4))
        return results
    finally:
        for server in started:
            try:
                server.stop()
            except servers.ServerError as exc:
                print(f"swap: {exc}", file=sys.stderr)
        if driver is not None:
            driver.close()
        if redis is not None:
            redis.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def _under_load(options: SwapOptions, started: list[servers.Server], driver: Driver, staged: list[int],
                placement: pinning.Pinning) -> dict[str, Any]:
    base = LoadSpec(url=started[0].url, model="iris", rows=1, encoding=options.encoding,
                    connections=options.connections, duration_s=options.max_duration_s, warmup_s=1.0)
    maximum = run_load(base, server_pid=started[0].pid, client_cpus=placement.client_cpus).summary()
    print(f"swap: maximum of one process {format_line(maximum)}", flush=True)
    servers.wait_idle(started[0].pid)
    # The other processes get the same warm-up, so that the RSS "before" the swaps is each
    # process's after a full load (allocator pools, caches) and what grows after is the swaps'.
    for server in started[1:]:
        run_load(replace(base, url=server.url), server_pid=server.pid, client_cpus=placement.client_cpus)
        servers.wait_idle(server.pid)
    rate = options.fraction * maximum["requests_per_s"]
    probes = [Probe(server.url) for server in started]
    listeners = [probe.start() for probe in probes]
    duration_s = options.steady_s + options.swaps * options.interval_s + options.tail_s
    loads: list[LoadResult | BaseException] = [RuntimeError("not run")] * len(started)

    def load(index: int) -> None:
        share = max(1, options.connections // len(started))
        spec = LoadSpec(url=started[index].url, model="iris", rows=1, encoding=options.encoding, connections=share,
                        rate_per_s=rate / len(started), duration_s=duration_s, warmup_s=options.warmup_s,
                        id_base=(index + 1) * 10**13)
        try:
            loads[index] = run_load(spec, server_pid=started[index].pid, client_cpus=placement.client_cpus)
        except BaseException as exc:  # reported below, with the swaps' own outcome
            loads[index] = exc

    threads = [threading.Thread(target=load, args=(index,), name=f"swap-load-{index}") for index in range(len(started))]
    began = clock()
    for thread in threads:
        thread.start()
    # The clients take a moment to connect before their clock starts: the schedule is approximate,
    # the measurements are not (commits are matched to the requests' own send times).
    time.sleep(1.0 + options.warmup_s + options.steady_s - RSS_SAMPLES * RSS_SAMPLE_INTERVAL_S)
    pids = [server.pid for server in started]
    rss_before = rss_mb(pids)
    commits: list[dict[str, Any]] = []
    first_swap = clock()
    for k in range(options.swaps):
        time.sleep(max(0.0, first_swap + k * options.interval_s - clock()))
        if k % 2 == 0:
            answer, action = driver.ask(op="activate", version=staged[k // 2]), "activated"
        else:
            answer, action = driver.ask(op="rollback"), "rolled back"
        commits.append({"action": action, "version": answer["version"], "committed_at": answer["committed_at"]})
        print(f"swap: {action} v{answer['version']}", flush=True)
    time.sleep(options.tail_s / 2)
    rss_after = rss_mb(pids)
    loaded = [loaded_versions(server) for server in started]
    for thread in threads:
        thread.join()
    for probe in probes:
        probe.stop.set()
    for listener in listeners:
        listener.join(timeout=5)
    failed = [result for result in loads if isinstance(result, BaseException)]
    if failed:
        raise servers.ServerError(f"A load of the swap scenario failed: {failed[0]}")
    results = [result for result in loads if isinstance(result, LoadResult)]
    for result in results:
        print(f"swap: {format_line(result.summary())}", flush=True)
    for index, commit in enumerate(commits):
        until = commits[index + 1]["committed_at"] if index + 1 < len(commits) else float("inf")
        told = [probe.told_at(commit["version"], commit["committed_at"] - 0.05) for probe in probes]
        commit["per_process_s"] = [None if at is None or at > until else round(at - commit["committed_at"], 4)
                                   for at in told]
        commit["every_process_s"] = None if None in commit["per_process_s"] else max(commit["per_process_s"])
    # The clients' clock is CLOCK_MONOTONIC; the commits are wall-clock times.
    offset = time.time() - clock()
    codes = Counter(code for result in results for code in result.codes.tolist())
    converged = [commit["every_process_s"] for commit in commits]
    return {
        "processes": len(started), "swaps": options.swaps, "interval_s": options.interval_s,
        "window_s": options.window_s, "max_requests_per_s": maximum["requests_per_s"], "rate_per_s": rate,
        "duration_s": duration_s, "started_in_s": round(clock() - began, 1),
        "loads": [result.summary() for result in results],
        "requests": sum(codes.values()), "errors": {code: n for code, n in sorted(codes.items()) if code != "ok"},
        **latency_split(results, [c["committed_at"] - offset for c in commits], options.window_s),
        "commits": commits,
        "convergence_s": {"max": None if None in converged else max(converged),
                          "median": None if None in converged else statistics.median(converged)},
        "rss_mb": {"before": rss_before, "after": rss_after,
                   "growth": max(after - before for before, after in zip(rss_before, rss_after, strict=True))},
        "loaded_versions_after": loaded,
    }


def main(argv: list[str] | None = None) -> None:
    defaults = SwapOptions()
    parser = argparse.ArgumentParser(prog="python -m bench.swap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--swaps", type=int, default=defaults.swaps)
    parser.add_argument("--processes", type=int, default=defaults.processes, help="server processes")
    parser.add_argument("--connections", type=int, default=defaults.connections)
    parser.add_argument("--interval", type=float, default=defaults.interval_s, help="seconds between swaps")
    parser.add_argument("--out", type=Path, default=servers.REPO_ROOT / "bench-results")
    parser.add_argument("--server-cpus", default=pinning.DEFAULT_SERVER_CPUS)
    parser.add_argument("--client-cpus", default=pinning.DEFAULT_CLIENT_CPUS)
    args = parser.parse_args(argv)
    if args.driver:
        drive()
        return
    from .report import swap_summary
    from .targets import swap_targets

    placement = pinning.plan(args.server_cpus, args.client_cpus)
    run_dir = args.out / f"{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-swap"
    run_dir.mkdir(parents=True)
    options = SwapOptions(swaps=args.swaps, processes=args.processes, connections=args.connections,
                          interval_s=args.interval)
    try:
        swap = scenario(options, run_dir, placement)
    except (servers.ServerError, ValueError) as exc:
        sys.exit(f"swap: {exc}")
    swap.update(machine=machine.facts(), pinning=placement.as_dict(), targets=swap_targets(swap))
    (run_dir / "swap.json").write_text(json.dumps(swap, indent=2) + "\n")
    verdicts = "\n".join(f"- {t['target']}: {t['result']} ({t['verdict']})" for t in swap["targets"])
    (run_dir / "swap.md").write_text(f"# Swap scenario\n\n{swap_summary(swap)}\n{verdicts}\n")
    latest = args.out / "latest"
    latest.mkdir(exist_ok=True)
    for name in ("swap.json", "swap.md"):
        shutil.copy2(run_dir / name, latest / name)
    print(swap_summary(swap) + "\n" + verdicts, flush=True)


if __name__ == "__main__":
    main()
