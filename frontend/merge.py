"""The whole platform from its processes' snapshots: what one dashboard message shows.

Every process publishes a snapshot a second (``monitoring.livestats``); a dashboard
consumer feeds them all to a ``PlatformView`` and sends ``message()`` to its
browser once a second. Totals since start are exact sums of the processes'
latest totals. Per-second figures are each process's rates over the windows
that arrived since the previous message, so a snapshot delayed past one
message is averaged into the next rather than counted twice or lost.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monitoring.livestats import BATCH_BUCKET_LABELS, BATCH_BUCKETS

# A process not heard from for this long has stopped (or lost the channel
# layer) and leaves the view; its totals leave the platform's totals with it.
STALE_AFTER_S = 5.0
# A process whose next snapshot is late keeps showing its last rates for this
# long, rather than dropping to zero for a message.
HOLD_RATES_S = 2.5
# Feed items kept between two messages, from all processes together.
RECENT_LIMIT = 50

_COUNTS = ("predictions", "rows", "errors")


@dataclass
class _Rates:
    """A process's per-second figures, from the windows of one or more snapshots."""

    predictions: float = 0.0
    rows: float = 0.0
    errors: float = 0.0
    errors_by_code: dict[str, float] = field(default_factory=dict)
    batches: float = 0.0
    batch_sizes: list[float] = field(default_factory=lambda: [0.0] * BATCH_BUCKETS)
    models: dict[str, dict[str, float]] = field(default_factory=dict)
    latency: list[dict[str, Any]] = field(default_factory=list)
    in_flight_peak: int = 0


def _rates(windows: list[tuple[float, dict[str, Any], int]]) -> _Rates:
    """Average per-second figures over ``(interval_s, window, in_flight_peak)`` triples."""
    seconds = sum(interval for interval, _, _ in windows) or 1.0
    rates = _Rates()
    errors_by_code: Counter[str] = Counter()
    batch_sizes = np.zeros(BATCH_BUCKETS)
    models: dict[str, Counter[str]] = {}
    for _, window, peak in windows:
        rates.predictions += window["predictions"]
        rates.rows += window["rows"]
        rates.errors += window["errors"]
        rates.batches += window["batches"]
        errors_by_code.update(window["errors_by_code"])
        batch_sizes += np.asarray(window["batch_sizes"][:BATCH_BUCKETS], dtype=np.float64)
        rates.latency.append(window["latency_ms"])
        rates.in_flight_peak = max(rates.in_flight_peak, peak)
    for _, window, _ in windows:
        for name, counts in window.get("models", {}).items():
            models.setdefault(name, Counter()).update(counts)
    rates.predictions /= seconds
    rates.rows /= seconds
    rates.errors /= seconds
    rates.batches /= seconds
    rates.errors_by_code = {code: n / seconds for code, n in errors_by_code.items()}
    rates.batch_sizes = (batch_sizes / seconds).tolist()
    rates.models = {name: {key: counts[key] / seconds for key in _COUNTS} for name, counts in models.items()}
    return rates


def merge_latency(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """p50/p95/p99 of several processes' latencies from their quantile sketches.

    A single process's exact percentiles are used as they are; several are
    merged by treating each of a process's quantiles as standing for an equal
    share of its requests.
    """
    summaries = [s for s in summaries if s and s.get("count")]
    if not summaries:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None}
    count = sum(s["count"] for s in summaries)
    peak = max(s["max"] for s in summaries)
    if len(summaries) == 1:
        only = summaries[0]
        return {"count": count, "p50": only["p50"], "p95": only["p95"], "p99": only["p99"], "max": peak}
    values = np.concatenate([np.asarray(s["quantiles"], dtype=np.float64) for s in summaries])
    weights = np.concatenate(
        [np.full(len(s["quantiles"]), s["count"] / len(s["quantiles"])) for s in summaries]
    )
    order = np.argsort(values)
    values, weights = values[order], weights[order]
    # Each point sits at the middle of the share of requests it stands for.
    positions = (np.cumsum(weights) - weights / 2) / weights.sum()
    p50, p95, p99 = np.interp((0.5, 0.95, 0.99), positions, values).tolist()
    return {"count": count, "p50": round(p50, 3), "p95": round(p95, 3), "p99": round(p99, 3), "max": peak}


@dataclass
class _Process:
    snapshot: dict[str, Any]
    received: float
    pending: list[tuple[float, dict[str, Any], int]] = field(default_factory=list)
    rates: _Rates = field(default_factory=_Rates)
    rates_at: float = 0.0


class PlatformView:
    """The latest snapshot of every live process, merged into one dashboard message."""

    def __init__(self, *, stale_after_s: float = STALE_AFTER_S, hold_rates_s: float = HOLD_RATES_S,
                 recent_limit: int = RECENT_LIMIT) -> None:
        self.stale_after_s = stale_after_s
        self.hold_rates_s = hold_rates_s
        self.recent_limit = recent_limit
        self._processes: dict[str, _Process] = {}
        self._recent: list[dict[str, Any]] = []

    def add(self, snapshot: dict[str, Any], *, now: float | None = None) -> None:
        """Take one process's snapshot, as it arrived from the channel layer."""
        now = time.monotonic() if now is None else now
        key = snapshot["process"]["id"]
        process = self._processes.get(key)
        if process is None or snapshot["process"]["started_at"] != process.snapshot["process"]["started_at"]:
            process = self._processes[key] = _Process(snapshot, now)
        process.snapshot, process.received = snapshot, now
        window = dict(snapshot["window"])
        window["models"] = {name: state["window"] for name, state in snapshot["models"].items()}
        process.pending.append((snapshot["interval_s"], window, snapshot["in_flight_peak"]))
        self._recent.extend(snapshot.get("recent", ()))
        del self._recent[: -self.recent_limit]

    @property
    def process_count(self) -> int:
        return len(self._processes)

    def message(self, *, now: float | None = None) -> dict[str, Any]:
        """The platform as of now; the feed items and windows received since the last call are used up."""
        now = time.monotonic() if now is None else now
        for key in [k for k, p in self._processes.items() if now - p.received > self.stale_after_s]:
            del self._processes[key]
        for process in self._processes.values():
            if process.pending:
                process.rates, process.rates_at = _rates(process.pending), now
                process.pending = []
            elif now - process.rates_at > self.hold_rates_s:
                process.rates = _Rates()
        processes = sorted(self._processes.values(), key=lambda p: p.snapshot["process"]["id"])
        recent, self._recent = self._recent, []
        return _merge(processes, recent, wall_time=time.time(), now=now)


def _merge(processes: list[_Process], recent: list[dict[str, Any]], *, wall_time: float,
           now: float) -> dict[str, Any]:
    totals = {key: 0 for key in (*_COUNTS, "batches")}
    errors_by_code: Counter[str] = Counter()
    batch_sizes = np.zeros(BATCH_BUCKETS, dtype=np.int64)
    rates = {key: 0.0 for key in (*_COUNTS, "batches")}
    error_rates: Counter[str] = Counter()
    batch_rates = np.zeros(BATCH_BUCKETS)
    latency: list[dict[str, Any]] = []
    models: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    gauges = {"connections": 0, "dashboards": 0, "in_flight": 0, "in_flight_peak": 0}

    for process in processes:
        snap, r = process.snapshot, process.rates
        for key in totals:
            totals[key] += snap["totals"][key]
        errors_by_code.update(snap["totals"]["errors_by_code"])
        batch_sizes += np.asarray(snap["totals"]["batch_sizes"][:BATCH_BUCKETS], dtype=np.int64)
        for key in rates:
            rates[key] += getattr(r, key)
        error_rates.update(r.errors_by_code)
        batch_rates += np.asarray(r.batch_sizes)
        latency.extend(r.latency)
        for key in ("connections", "dashboards", "in_flight"):
            gauges[key] += snap[key]
        gauges["in_flight_peak"] += max(r.in_flight_peak, snap["in_flight"])
        for name, state in snap["models"].items():
            merged = models.setdefault(name, {
                "active_versions": Counter(), "loaded_versions": set(), "failed_versions": set(),
                "devices": set(), "queue_depth": 0, "computing_rows": 0,
                "totals": dict.fromkeys(_COUNTS, 0), "rates": dict.fromkeys(_COUNTS, 0.0), "processes": 0,
            })
            merged["processes"] += 1
            if state["active_version"] is not None:
                merged["active_versions"][state["active_version"]] += 1
            merged["loaded_versions"].update(state["loaded_versions"])
            merged["failed_versions"].update(state["failed_versions"])
            if state["device"]:
                merged["devices"].add(state["device"])
            merged["queue_depth"] += state["queue_depth"]
            merged["computing_rows"] += state["computing_rows"]
            for key in _COUNTS:
                merged["totals"][key] += state["totals"][key]
                merged["rates"][key] += r.models.get(name, {}).get(key, 0.0)
        rows.append({
            "id": snap["process"]["id"],
            "host": snap["process"]["host"],
            "pid": snap["process"]["pid"],
            "uptime_s": round(max(0.0, snap["time"] - snap["process"]["started_at"]), 1),
            "age_s": round(now - process.received, 2),
            "connections": snap["connections"],
            "dashboards": snap["dashboards"],
            "in_flight": snap["in_flight"],
            "totals": {key: snap["totals"][key] for key in _COUNTS},
            "rates": {key: round(getattr(r, key), 3) for key in _COUNTS},
        })

    for row in rows:
        row["share"] = round(row["totals"]["predictions"] / totals["predictions"], 4) if totals["predictions"] else None
    for state in models.values():
        versions = state.pop("active_versions")
        state["active_version"] = versions.most_common(1)[0][0] if versions else None
        state["active_versions"] = sorted(versions)
        for key in ("loaded_versions", "failed_versions", "devices"):
            state[key] = sorted(state[key])
        state["rates"] = {key: round(value, 3) for key, value in state["rates"].items()}

    return {
        "type": "stats",
        "time": wall_time,
        "processes": rows,
        "totals": {**totals, "errors_by_code": dict(errors_by_code), "batch_sizes": batch_sizes.tolist()},
        "rates": {
            **{key: round(value, 3) for key, value in rates.items()},
            "errors_by_code": {code: round(n, 3) for code, n in error_rates.items() if n},
            "batch_sizes": [round(n, 3) for n in batch_rates.tolist()],
        },
        "latency_ms": merge_latency(latency),
        **gauges,
        "batch_size_labels": BATCH_BUCKET_LABELS,
        "models": dict(sorted(models.items())),
        "recent": recent,
    }
