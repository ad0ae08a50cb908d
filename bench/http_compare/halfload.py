"""Latency at half load: an open loop at half a server's best closed-loop rate, and its table.

The closed loops find each server's maximum at the most connections; the
open loop (:mod:`.openloop`) then sends at half of it, on a fixed schedule
over as many connections, so the latency reported is what a client sees at
that rate, queueing included. The platform's figures are checked against the
targets below; MLServer's, measured the same way at half of its own maximum,
are for reference.
"""

from __future__ import annotations

from typing import Any

from .. import pinning, servers
from . import openloop

#: The servers measured at half load; the others only in closed loops.
SERVERS = ("platform", "mlserver")
#: The platform's targets at half load over HTTP (the same as over WebSocket).
P50_MAX_MS = 1.5
P99_MAX_MS = 5.0
FRACTION = 0.5


def half_rate(closed_rows: list[dict[str, Any]]) -> tuple[float, int, float] | None:
    """The half-load rate, its connections and the closed-loop rate it halves; None when there is none."""
    if not closed_rows:
        return None
    closed = max(closed_rows, key=lambda row: row["connections"])
    rate = closed["requests_per_s"] * FRACTION
    return (rate, closed["connections"], closed["requests_per_s"]) if rate > 0 else None


def meets_targets(result: dict[str, Any]) -> bool:
    """Whether an open loop's figures meet the platform's targets, every request answered with a 200."""
    latency = result["latency_ms"]
    return (latency["p50"] is not None and latency["p50"] <= P50_MAX_MS and latency["p99"] <= P99_MAX_MS
            and result["ok"] == result["requests"] > 0)


def measure(name: str, url: str, body: dict[str, Any], closed_rows: list[dict[str, Any]], *, duration_s: float,
            placement: pinning.Pinning, pid: int) -> dict[str, Any] | None:
    """The open loop at half of ``name``'s best closed-loop rate at its most connections; None when none ran."""
    half = half_rate(closed_rows)
    if name not in SERVERS or half is None:
        return None
    rate, connections, closed_rate = half
    servers.wait_idle(pid)
    result = openloop.run(url, body, rate_per_s=rate, duration_s=duration_s, connections=connections,
                          cpus=placement.client_cpus)
    row = {"server": name, "closed_loop_requests_per_s": closed_rate, **result}
    if name == "platform":
        row["meets_targets"] = meets_targets(result)
    lat, lag = result["latency_ms"], result["send_lag_ms"]
    print(f"  [{name}] http open loop @{rate:.0f}/s: {result['achieved_rate_per_s']:.0f} req/s, "
          f"p50 {lat['p50']} p90 {lat['p90']} p99 {lat['p99']} max {lat['max']} ms, "
          f"send lag p99 {lag['p99']} ms, {result['requests'] - result['ok']} failed", flush=True)
    return row


def table(rows: list[dict[str, Any]], labels: dict[str, str]) -> list[str]:
    """The half-load rows as Markdown lines, with the platform's targets."""
    if not rows:
        return []
    lines = [
        f"\nOpen loop at half of each server's best closed-loop rate at {rows[0]['connections']} connections "
        f"({rows[0]['duration_s']:g} s after a warm-up): requests on a fixed schedule, round-robin over keep-alive "
        "connections, latency from each request's scheduled time to its full response. The platform's targets: "
        f"p50 <= {P50_MAX_MS:g} ms and p99 <= {P99_MAX_MS:g} ms.\n",
        "| server | target req/s | achieved req/s | p50 ms | p90 ms | p99 ms | max ms | failed | send lag p99 ms "
        "| targets |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    fmt = lambda value: "-" if value is None else f"{value:.2f}"  # noqa: E731
    for row in rows:
        lat = row["latency_ms"]
        verdict = {True: "met", False: "missed", None: "-"}[row.get("meets_targets")]
        lines.append(f"| {labels[row['server']]} | {row['target_rate_per_s']:,.0f} | "
                     f"{row['achieved_rate_per_s']:,.0f} | {fmt(lat['p50'])} | {fmt(lat['p90'])} | "
                     f"{fmt(lat['p99'])} | {fmt(lat['max'])} | {row['requests'] - row['ok']} | "
                     f"{fmt(row['send_lag_ms']['p99'])} | {verdict} |")
    return lines
