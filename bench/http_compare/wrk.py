"""wrk, the HTTP load generator: one POST body over keep-alive connections, as fast as the server answers.

Every server gets the very same load from the same C program, which is not
the bottleneck at these rates on a core of its own. ``wrk --latency`` prints
the 50th to 99th percentiles; they are read from its report.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from ..pinning import under_taskset

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_PERCENTILE = re.compile(r"^\s*(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)
_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", re.MULTILINE)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s*(\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


class WrkError(Exception):
    """wrk is missing, failed, or printed a report this module cannot read."""


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    failed: int

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


def parse(report: str) -> WrkResult:
    """The numbers of one ``wrk --latency`` report."""
    percentiles = {int(p): float(v) * _UNITS_MS[unit] for p, v, unit in _PERCENTILE.findall(report)}
    total = _TOTAL.search(report)
    if total is None or not {50, 90, 99} <= percentiles.keys():
        raise WrkError(f"Could not read wrk's report:\n{report}")
    non_2xx = _NON_2XX.search(report)
    socket_errors = _SOCKET_ERRORS.search(report)
    failed = (int(non_2xx.group(1)) if non_2xx else 0) + (
        sum(int(n) for n in socket_errors.groups()) if socket_errors else 0)
    return WrkResult(
        requests=int(total.group(1)), duration_s=float(total.group(2)) * _UNITS_MS[total.group(3)] / 1000.0,
        p50_ms=percentiles[50], p90_ms=percentiles[90], p99_ms=percentiles[99], failed=failed,
    )


def run(url: str, body: dict, *, connections: int, duration_s: float, cpus: Collection[int] | None) -> WrkResult:
    """POST ``body`` as JSON to ``url`` from ``connections`` connections for ``duration_s``, on ``cpus``."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise WrkError("wrk is not installed: scripts/system-deps.sh installs Debian's wrk package.")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write('wrk.method = "POST"\n')
        script.write('wrk.headers["Content-Type"] = "application/json"\n')
        script.write(f"wrk.body = {json.dumps(json.dumps(body, separators=(',', ':')))}\n")
    try:
        command = under_taskset(cpus, [wrk, "--latency", "-t1", f"-c{connections}", f"-d{duration_s:g}s",
                                       "--timeout", "10s", "-s", script.name, url])
        done = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 60)
    finally:
        Path(script.name).unlink(missing_ok=True)
    if done.returncode != 0:
        raise WrkError(f"wrk exited with status {done.returncode}: {done.stderr.strip() or done.stdout}")
    return parse(done.stdout)
