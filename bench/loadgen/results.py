"""A load's outcome: every request's columns, and the statistics of its measurement window.

Closed loop: the window's statistics cover the requests *answered* inside it.
Open loop: they cover the requests *scheduled* inside it, latency counted from
the scheduled send time, and a request still unanswered when the drain time
ran out is an error (``no_reply``). CPU figures are per request answered with
a prediction inside the window.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .client import WorkerResult
from .spec import LoadSpec

NO_REPLY = "no_reply"


@dataclass
class LoadResult:
    """Every request of a run, and the figures of its measurement window."""

    spec: LoadSpec
    start: float
    ids: np.ndarray
    sent_at: np.ndarray
    lag: np.ndarray
    done_at: np.ndarray
    #: Error code of each request: "ok", the protocol's code, or "no_reply".
    codes: np.ndarray
    batch_size: np.ndarray
    replies: int
    unmatched: dict[str, int]
    closed_by_server: int
    client_cpu_s: float
    features: int
    #: The CPUs the client processes were allowed to run on.
    client_cpus: list[int] = field(default_factory=list)
    #: CPU time of the server's process tree over the window; None when no server pid was given.
    server_cpu_s: float | None = None
    server_rss_mb: float | None = None
    #: The CPUs the server's processes were allowed to run on, and how many there were, at the window's end.
    server_cpus: list[int] | None = None
    server_processes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def window(self) -> tuple[float, float]:
        begin = self.start + self.spec.warmup_s
        return begin, begin + self.spec.duration_s

    def in_window(self) -> np.ndarray:
        """The requests this run's statistics cover (see the module docstring)."""
        begin, end = self.window
        if self.spec.mode == "closed":
            return (self.done_at >= begin) & (self.done_at < end)
        return (self.sent_at >= begin) & (self.sent_at < end)

    def answered_ids(self) -> np.ndarray:
        """Ids of every request that got a reply, prediction or error, warm-up included."""
        return self.ids[self.codes != NO_REPLY]

    def summary(self) -> dict[str, Any]:
        spec = self.spec
        duration = spec.duration_s
        mask = self.in_window()
        codes = self.codes[mask]
        ok = codes == "ok"
        latency_ms = (self.done_at[mask][ok] - self.sent_at[mask][ok]) * 1000.0
        batches = self.batch_size[mask][ok]
        batches = batches[batches >= 0]
        n_ok = int(ok.sum())

        def per_request_us(cpu_s: float | None) -> float | None:
            return None if cpu_s is None or n_ok == 0 else round(cpu_s / n_ok * 1e6, 1)

        totals = Counter(self.codes.tolist())
        window_codes = Counter(codes.tolist())
        summary: dict[str, Any] = {
            "mode": spec.mode,
            "model": spec.model,
            "rows": spec.rows,
            "features": self.features,
            "encoding": spec.encoding,
            "connections": spec.connections,
            "in_flight": spec.in_flight if spec.mode == "closed" else None,
            "target_rate_per_s": spec.rate_per_s,
            "duration_s": duration,
            "warmup_s": spec.warmup_s,
            "processes": spec.processes,
            "requests_per_s": n_ok / duration,
            "rows_per_s": n_ok * spec.rows / duration,
            "latency_ms": _percentiles(latency_ms),
            "window": {
                "requests": int(mask.sum()),
                "ok": n_ok,
                "errors": {code: n for code, n in sorted(window_codes.items()) if code != "ok"},
            },
            "counts": {
                "sent": int(self.ids.size),
                "ok": totals.get("ok", 0),
                "errors": {code: n for code, n in sorted(totals.items()) if code not in ("ok", NO_REPLY)},
                "unanswered": totals.get(NO_REPLY, 0),
                "replies": self.replies,
                "unmatched_replies": self.unmatched,
                "connections_closed_by_server": self.closed_by_server,
            },
            "batch_size": _batch_summary(batches),
            "client_cpu_cores": self.client_cpu_s / duration,
            "server_cpu_cores": None if self.server_cpu_s is None else self.server_cpu_s / duration,
            "client_cpu_us_per_request": per_request_us(self.client_cpu_s),
            "server_cpu_us_per_request": per_request_us(self.server_cpu_s),
            "server_rss_mb": self.server_rss_mb,
            "client_cpus": self.client_cpus,
            "server_cpus": self.server_cpus,
            "server_processes": self.server_processes,
        }
        if spec.mode == "open":
            lag_ms = self.lag[mask] * 1000.0
            summary["send_lag_ms"] = _percentiles(lag_ms)
        summary.update(self.extra)
        return summary


def _percentiles(values_ms: np.ndarray) -> dict[str, float | None]:
    if values_ms.size == 0:
        return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    p50, p95, p99 = np.percentile(values_ms, [50, 95, 99])
    return {
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "p99": round(float(p99), 3),
        "max": round(float(values_ms.max()), 3),
        "mean": round(float(values_ms.mean()), 3),
    }


def _batch_summary(batches: np.ndarray) -> dict[str, Any]:
    if batches.size == 0:
        return {"mean": None, "p50": None, "p99": None, "max": None, "histogram": {}}
    values, counts = np.unique(batches, return_counts=True)
    return {
        # Per request: the size of the batch that served the average request.
        "mean": round(float(batches.mean()), 2),
        "p50": int(np.percentile(batches, 50)),
        "p99": int(np.percentile(batches, 99)),
        "max": int(batches.max()),
        "histogram": {int(v): int(c) for v, c in zip(values, counts, strict=True)},
    }


@dataclass(frozen=True)
class ServerFigures:
    """The server's process tree as measured over a load's window: CPU time, then RSS and affinity at its end."""

    cpu_s: float
    rss_mb: float
    #: Union of the CPUs its processes were allowed to run on.
    cpus: list[int]
    processes: int


def aggregate(spec: LoadSpec, start: float, results: list[WorkerResult],
              server: ServerFigures | None = None) -> LoadResult:
    """One ``LoadResult`` from every client process's columns and the server's figures, if measured."""

    def column(name: str, dtype: str) -> np.ndarray:
        parts = [np.frombuffer(getattr(r, name), dtype=dtype) for r in results]
        return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)

    code_parts = []
    for result in results:
        names = np.array([NO_REPLY, *result.codes], dtype=object)
        status = np.frombuffer(result.status, dtype=np.int8)
        code_parts.append(names[status.astype(np.int64) + 1])
    unmatched: Counter[str] = Counter()
    for result in results:
        unmatched.update(result.unmatched)
    return LoadResult(
        spec=spec,
        start=start,
        ids=column("ids", "i8"),
        sent_at=column("sent_at", "f8"),
        lag=column("lag", "f8"),
        done_at=column("done_at", "f8"),
        codes=np.concatenate(code_parts) if code_parts else np.empty(0, dtype=object),
        batch_size=column("batch_size", "i4"),
        replies=sum(r.replies for r in results),
        unmatched=dict(unmatched),
        closed_by_server=sum(r.closed_by_server for r in results),
        features=results[0].features if results else 0,
        client_cpu_s=float(sum(r.cpu_s for r in results)),
        client_cpus=sorted({cpu for r in results for cpu in r.cpus}),
        server_cpu_s=None if server is None else server.cpu_s,
        server_rss_mb=None if server is None else server.rss_mb,
        server_cpus=None if server is None else server.cpus,
        server_processes=None if server is None else server.processes,
    )


def format_line(summary: dict[str, Any]) -> str:
    """One line of a summary, for progress output."""
    lat = summary["latency_ms"]
    errors = summary["window"]["errors"]
    batch = summary["batch_size"]
    target = f" @{summary['target_rate_per_s']:.0f}/s" if summary["target_rate_per_s"] else ""
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    server = summary.get("server_cpu_cores")
    per_request = summary.get("server_cpu_us_per_request")
    return (
        f"{summary['mode']}{target} {summary['model']} x{summary['rows']}: "
        f"{summary['requests_per_s']:.0f} req/s, {summary['rows_per_s']:.0f} rows/s, "
        f"p50 {fmt(lat['p50'])} p99 {fmt(lat['p99'])} max {fmt(lat['max'])} ms, "
        f"batch mean {batch['mean']}, errors {errors or 0}, "
        f"cpu client {summary['client_cpu_cores']:.2f} server {'-' if server is None else f'{server:.2f}'}"
        f" ({'-' if per_request is None else f'{per_request:.0f}'} µs/req)"
    )
