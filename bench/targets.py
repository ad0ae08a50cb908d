"""The targets a comparison is judged by, and the verdict on each."""

from __future__ import annotations

from typing import Any

SERVER_LABELS = {
    "platform": "platform",
    "platform-nomon": "platform, monitoring off",
    "platform-nojournal": "platform, journal off",
    "ceiling": "transport ceiling",
    "ceiling-nocleanup": "ceiling without per-frame DB cleanup",
    "ceiling-direct": "ceiling on the platform's transport path",
    "naive": "naive (predict per message)",
}
#: The bare Channels consumers the ceiling target is judged against (the issue's "bare Channels consumer").
CEILINGS = ("ceiling", "ceiling-nocleanup")

# The targets.
CEILING_SHARE_MIN = 0.80
KERAS_SPEEDUP_MIN = 20.0
HALF_LOAD_P99_MAX_MS = 15.0
MONITORING_COST_MAX = 0.10
SOAK_RSS_GROWTH_MAX = 0.05


JOURNAL_COST_MAX = 0.05
JOURNAL_P99_RATIO_MAX = 1.2

# The swap scenario's (bench.swap): versions activated and rolled back at half load.
SWAP_ERRORS_MAX = 0
SWAP_P99_RATIO_MAX = 2.0
#: From a commit until every server process serves it (the end-to-end test's bound).
SWAP_CONVERGENCE_MAX_S = 2.0
#: A server process's RSS may grow by one model (the standby kept loaded) and this much besides:
#: its buffers and the allocator's arenas move by a few MiB under a steady load, swaps or not.
SWAP_RSS_NOISE_MB = 4.0


def find(results: dict[str, Any], server: str, kind: str, workload: str) -> dict[str, Any] | None:
    for run in results.get("runs", []):
        if run["server"] == server and run["kind"] == kind and run["workload"] == workload:
            return run
    return None


def workloads(results: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    for run in results.get("runs", []):
        if run["workload"] not in seen and run["kind"] == "max":
            seen.append(run["workload"])
    return seen


def transport_ceiling(results: dict[str, Any], workload: str) -> dict[str, Any] | None:
    """The faster of the two bare Channels consumers: stock, and without the per-frame database cleanup.

    The platform's consumer skips that cleanup, so the stock consumer alone
    would flatter it. ``ceiling-direct`` is not a Channels consumer any more
    (it bypasses Channels' read loop and the ASGI send): it is reported next
    to the target, as the strictest yardstick, but not judged.
    """
    candidates = [run for name in CEILINGS if (run := find(results, name, "max", workload))]
    return max(candidates, key=lambda run: run["requests_per_s"]) if candidates else None


def _verdict(passed: bool, margin: str) -> str:
    return f"pass, by {margin}" if passed else f"**FAIL**, short by {margin}"


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue that this run can judge, with its value and by how much it passes or fails."""
    verdicts: list[dict[str, Any]] = []

    def add(target: str, workload: str, value: float, threshold: float, passed: bool, margin: str,
            result: str) -> None:
        verdicts.append({"target": target, "workload": workload, "value": round(value, 4),
                         "threshold": threshold, "pass": passed, "result": result,
                         "verdict": _verdict(passed, margin)})

    log = (results.get("log_checks") or {}).get("platform")
    for workload in workloads(results):
        if not workload.endswith(" x1"):
            continue
        platform, ceiling = find(results, "platform", "max", workload), transport_ceiling(results, workload)
        if platform and ceiling and ceiling["requests_per_s"]:
            share = platform["requests_per_s"] / ceiling["requests_per_s"]
            passed = share >= CEILING_SHARE_MIN
            add("single-row req/s >= 80% of the transport ceiling", workload, share, CEILING_SHARE_MIN, passed,
                f"{abs(share - CEILING_SHARE_MIN) * 100:.1f} points",
                f"{share:.0%} ({platform['requests_per_s']:.0f} vs {ceiling['requests_per_s']:.0f} req/s, "
                f"{SERVER_LABELS[ceiling['server']]})")
        direct = find(results, "ceiling-direct", "max", workload)
        if platform and direct and direct["requests_per_s"]:
            share = platform["requests_per_s"] / direct["requests_per_s"]
            passed = share >= CEILING_SHARE_MIN
            add("(strictest reading) single-row req/s >= 80% of a bare responder on the platform's transport path",
                workload, share, CEILING_SHARE_MIN, passed, f"{abs(share - CEILING_SHARE_MIN) * 100:.1f} points",
                f"{share:.0%} ({platform['requests_per_s']:.0f} vs {direct['requests_per_s']:.0f} req/s, "
                f"{SERVER_LABELS['ceiling-direct']})")
    if log is not None:
        add("every prediction logged (platform)", "all loads", log["missing"] + log["duplicates"] + log["unexpected"],
            0, log["exact"],
            "0 records" if log["exact"] else f"{log['missing']} missing, {log['duplicates']} duplicated, "
            f"{log['unexpected']} unexpected",
            f"{log['records']} records for {log['answered']} answered requests")
    for workload in workloads(results):
        if not workload.startswith("digits"):
            continue
        platform, naive = find(results, "platform", "max", workload), find(results, "naive", "max", workload)
        if platform and naive and naive["requests_per_s"]:
            speedup = platform["requests_per_s"] / naive["requests_per_s"]
            passed = speedup >= KERAS_SPEEDUP_MIN
            add("Keras: platform >= 20x the naive approach", workload, speedup, KERAS_SPEEDUP_MIN, passed,
                f"{abs(speedup - KERAS_SPEEDUP_MIN):.1f}x",
                f"{speedup:.1f}x ({platform['requests_per_s']:.0f} vs {naive['requests_per_s']:.1f} req/s)")
    for workload in workloads(results):
        half = find(results, "platform", "half", workload)
        if half and half["latency_ms"]["p99"] is not None:
            p99 = half["latency_ms"]["p99"]
            errors = sum(half["window"]["errors"].values())
            passed = p99 <= HALF_LOAD_P99_MAX_MS and errors == 0
            margin = f"{abs(HALF_LOAD_P99_MAX_MS - p99):.1f} ms" + (f" and {errors} errors" if errors else "")
            add("p99 <= 15 ms at half the platform's maximum", workload, p99, HALF_LOAD_P99_MAX_MS, passed, margin,
                f"p99 {p99:.1f} ms at {half['requests_per_s']:.0f} req/s")
    for workload in workloads(results):
        on, off = find(results, "platform", "max", workload), find(results, "platform-nomon", "max", workload)
        if on and off and off["requests_per_s"]:
            cost = 1.0 - on["requests_per_s"] / off["requests_per_s"]
            passed = cost <= MONITORING_COST_MAX
            add("prediction log and metrics cost <= 10% of throughput", workload, cost, MONITORING_COST_MAX, passed,
                f"{abs(MONITORING_COST_MAX - cost) * 100:.1f} points",
                f"{cost:+.1%} ({on['requests_per_s']:.0f} vs {off['requests_per_s']:.0f} req/s)")
    for workload in workloads(results):
        if not workload.endswith(" x1"):
            continue
        on, off = find(results, "platform", "max", workload), find(results, "platform-nojournal", "max", workload)
        if on and off and off["requests_per_s"]:
            cost = 1.0 - on["requests_per_s"] / off["requests_per_s"]
            passed = cost <= JOURNAL_COST_MAX
            add("crash-safe journal costs <= 5% of single-row throughput", workload, cost, JOURNAL_COST_MAX, passed,
                f"{abs(JOURNAL_COST_MAX - cost) * 100:.1f} points",
                f"{cost:+.1%} ({on['requests_per_s']:.0f} vs {off['requests_per_s']:.0f} req/s)")
        on, off = find(results, "platform", "half", workload), find(results, "platform-nojournal", "half", workload)
        if on and off and on["latency_ms"]["p99"] and off["latency_ms"]["p99"]:
            ratio = on["latency_ms"]["p99"] / off["latency_ms"]["p99"]
            passed = ratio <= JOURNAL_P99_RATIO_MAX
            add("journal: p99 at half load within 1.2x of the journal off", workload, ratio, JOURNAL_P99_RATIO_MAX,
                passed, f"{abs(JOURNAL_P99_RATIO_MAX - ratio):.2f}x",
                f"{ratio:.2f}x ({on['latency_ms']['p99']:.1f} vs {off['latency_ms']['p99']:.1f} ms)")
    verdicts += swap_targets(results.get("swap"))
    soak = results.get("soak")
    if soak:
        growth = soak["rss"]["growth"]
        passed = growth is not None and growth < SOAK_RSS_GROWTH_MAX
        add(f"{soak['minutes']:g}-minute soak at half load: RSS grows < 5% after warm-up", soak["workload"],
            growth if growth is not None else float("nan"), SOAK_RSS_GROWTH_MAX, passed,
            f"{abs(SOAK_RSS_GROWTH_MAX - (growth or 0)) * 100:.1f} points",
            f"{(growth or 0):+.1%} ({soak['rss']['baseline_mb']:.0f} -> {soak['rss']['final_mb']:.0f} MiB)")
        check = soak["log_check"]
        add("soak: no prediction record missing", soak["workload"], check["missing"], 0, check["exact"],
            "0 records" if check["exact"] else f"{check['missing']} missing, {check['duplicates']} duplicated",
            f"{check['records']} records for {check['answered']} answered requests")
    return verdicts




def swap_targets(swap: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The swap scenario's targets: no errors, p99 during swaps, convergence, RSS after ten swaps."""
    if not swap:
        return []
    verdicts: list[dict[str, Any]] = []
    workload = f"iris x1, {swap['processes']} processes, {swap['swaps']} swaps"

    def add(target: str, value: float, threshold: float, passed: bool, margin: str, result: str) -> None:
        verdicts.append({"target": target, "workload": workload, "value": round(value, 4), "threshold": threshold,
                         "pass": passed, "result": result, "verdict": _verdict(passed, margin)})

    errors = sum(swap["errors"].values())
    add("swaps at half load: no request fails", errors, SWAP_ERRORS_MAX, errors <= SWAP_ERRORS_MAX,
        f"{abs(errors - SWAP_ERRORS_MAX)} requests", f"{errors} errors in {swap['requests']:,} requests")
    steady, during = swap["p99_steady_ms"], swap["p99_swap_ms"]
    if steady and during:
        ratio = during / steady
        add("swaps: p99 during a swap <= 2x steady state", ratio, SWAP_P99_RATIO_MAX, ratio <= SWAP_P99_RATIO_MAX,
            f"{abs(SWAP_P99_RATIO_MAX - ratio):.2f}x", f"{ratio:.2f}x ({during:.1f} vs {steady:.1f} ms)")
    slowest = swap["convergence_s"]["max"]
    add("swaps: every process serves a new version within 2 s of its commit",
        float("nan") if slowest is None else slowest, SWAP_CONVERGENCE_MAX_S,
        slowest is not None and slowest <= SWAP_CONVERGENCE_MAX_S,
        "-" if slowest is None else f"{abs(SWAP_CONVERGENCE_MAX_S - slowest):.2f} s",
        "a process never served one" if slowest is None else
        f"slowest {slowest:.3f} s, median {swap['convergence_s']['median']:.3f} s")
    growth, allowed = swap["rss_mb"]["growth"], swap["model_mb"] + SWAP_RSS_NOISE_MB
    add(f"swaps: RSS after {swap['swaps']} swaps grows by at most one model (+{SWAP_RSS_NOISE_MB:g} MiB noise)",
        growth, allowed, growth <= allowed, f"{abs(allowed - growth):.1f} MiB",
        f"{growth:+.1f} MiB (one model {swap['model_mb']:.3f} MiB); loaded at the end: "
        + "; ".join(", ".join(loaded) for loaded in swap["loaded_versions_after"]))
    return verdicts
