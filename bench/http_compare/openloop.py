"""An open-loop HTTP/1.1 load generator: one POST body at a fixed rate, latency counted from the schedule.

wrk runs closed loops: a connection sends its next request when the last
reply arrives, so a server that stalls also stops the clock that would have
measured the stall (coordinated omission). Here request ``k`` is scheduled at
``start + k / rate`` whatever the server does, and its latency runs from that
scheduled time to the last byte of its response.

Requests go round-robin over ``connections`` keep-alive connections. HTTP/1.1
answers in order and this generator does not pipeline: a request whose
connection is still waiting for an earlier response queues on that
connection and is sent when the response arrives, its wait counted in its
latency (as wrk2 does). Such requests are counted as ``queued``.

The sender waits for each scheduled time with a timerfd (:mod:`.waker`),
since asyncio's own timers are a millisecond coarse; how late each request
was still handed to its connection is reported as ``send_lag_ms``, and
whether the precise timer was there as ``precise_timer``.

``python -m bench.http_compare.openloop URL --rate R`` runs one load and
prints its summary as JSON; :func:`run` does that pinned to given CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import subprocess
import sys
import time
from array import array
from collections import Counter, deque
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from ..pinning import under_taskset
from ..servers import REPO_ROOT
from .waker import Waker, clock

#: Status of a request that got no response: the connection failed, or the drain time ran out.
NO_RESPONSE = 0
PERCENTILES = (50, 90, 99)


class OpenLoopError(Exception):
    """The load could not be run: bad options, no connection, or a child process that failed."""


@dataclass
class Record:
    """One entry per scheduled request, in schedule order."""

    scheduled: array
    lag: array  # when the scheduler handed it over, minus the scheduled time
    done: array  # NaN while unanswered
    status: array  # the HTTP status, NO_RESPONSE while unanswered

    @classmethod
    def of(cls, n: int) -> Record:
        return cls(array("d", bytes(8 * n)), array("d", bytes(8 * n)), array("d", [math.nan]) * n,
                   array("H", bytes(2 * n)))


def schedule(rate_per_s: float, duration_s: float, start: float = 0.0) -> np.ndarray:
    """The send times of a constant rate over ``duration_s``: ``start + k / rate``."""
    if rate_per_s <= 0 or duration_s <= 0:
        raise OpenLoopError(f"The rate ({rate_per_s}/s) and the duration ({duration_s} s) must both be positive.")
    return start + np.arange(math.ceil(rate_per_s * duration_s - 1e-9)) / rate_per_s


def request_bytes(url: str, body: bytes) -> bytes:
    parts = urlsplit(url)
    head = (f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


class ResponseReader:
    """Splits a stream of HTTP/1.1 responses framed by ``Content-Length``; ``feed`` yields their statuses."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[int]:
        self.buffer += data
        statuses: list[int] = []
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return statuses
            head = bytes(self.buffer[:head_end]).lower()
            at = head.find(b"\r\ncontent-length:")
            if not head.startswith(b"http/1.") or at < 0:
                raise OpenLoopError(f"Cannot frame this response (HTTP/1.x with Content-Length only): {head[:200]!r}")
            line_end = head.find(b"\r\n", at + 2)
            length = int(head[at + 17:line_end if line_end > 0 else None])
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return statuses
            statuses.append(int(head[9:12]))
            del self.buffer[:end]


class _Connection(asyncio.Protocol):
    def __init__(self, request: bytes, record: Record, on_lost: Counter[str]) -> None:
        self.request = request
        self.record = record
        self.reader = ResponseReader()
        self.in_flight: int | None = None  # index of the request awaiting its response
        self.waiting: deque[int] = deque()
        self.queued = 0
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.on_lost = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def submit(self, index: int) -> None:
        if self.closed:
            return  # stays unanswered
        if self.in_flight is None:
            self.in_flight = index
            self.transport.write(self.request)  # type: ignore[union-attr]
        else:
            self.queued += 1
            self.waiting.append(index)

    def data_received(self, data: bytes) -> None:
        now = clock()
        try:
            statuses = self.reader.feed(data)
        except (OpenLoopError, ValueError) as exc:
            self.on_lost[f"unreadable response: {exc}"[:200]] += 1
            self.transport.close()  # type: ignore[union-attr]
            return
        for status in statuses:
            if self.in_flight is None:
                self.on_lost["response to no request"] += 1
                continue
            self.record.done[self.in_flight] = now
            self.record.status[self.in_flight] = status
            self.in_flight = None
            if self.waiting:
                self.in_flight = self.waiting.popleft()
                self.transport.write(self.request)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self.on_lost[f"connection closed: {exc}" if exc else "connection closed by the server"] += 1

    @property
    def pending(self) -> bool:
        return not self.closed and (self.in_flight is not None or bool(self.waiting))


async def generate(url: str, body: bytes, *, rate_per_s: float, duration_s: float, connections: int = 50,
                   warmup_s: float = 1.0, drain_timeout_s: float = 5.0) -> dict[str, Any]:
    """Run one open loop against ``url``; its summary (see :func:`summarize`)."""
    if connections < 1:
        raise OpenLoopError(f"connections must be at least 1, not {connections}.")
    times = schedule(rate_per_s, warmup_s + duration_s)
    record = Record.of(times.size)
    lost: Counter[str] = Counter()
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise OpenLoopError(f"{url!r} is not an http:// URL.")
    request = request_bytes(url, body)
    loop = asyncio.get_running_loop()
    try:
        conns = [(await loop.create_connection(lambda: _Connection(request, record, lost), parts.hostname,
                                               parts.port or 80))[1] for _ in range(connections)]
    except OSError as exc:
        raise OpenLoopError(f"Could not connect to {url}: {exc}") from exc
    waker = Waker(loop)
    precise = waker.precise
    cpu_before = time.process_time()
    start = clock() + 0.05
    times += start
    n = len(conns)
    for k, at in enumerate(times.tolist()):
        if clock() < at:
            await waker.until(at)
        else:
            await asyncio.sleep(0)  # one pass of the loop per request, so replies are read on time while catching up
        record.scheduled[k] = at
        record.lag[k] = clock() - at
        conns[k % n].submit(k)
    sent_end = clock()
    waker.close()
    deadline = sent_end + drain_timeout_s
    while any(conn.pending for conn in conns) and clock() < deadline:
        await asyncio.sleep(0.005)
    cpu_s = time.process_time() - cpu_before
    for conn in conns:
        conn.transport.close()  # type: ignore[union-attr]
    window = (start + warmup_s, start + warmup_s + duration_s)
    return summarize(record, window, rate_per_s=rate_per_s, connections=n,
                     queued=sum(c.queued for c in conns), lost=dict(lost), client_cpu_s=cpu_s,
                     send_span_s=sent_end - start, precise_timer=precise)


def percentiles(values_ms: np.ndarray) -> dict[str, float | None]:
    """p50, p90, p99, max and mean in milliseconds, rounded to the microsecond; None when there are none."""
    names = [f"p{p}" for p in PERCENTILES] + ["max", "mean"]
    if values_ms.size == 0:
        return dict.fromkeys(names)
    found = [*np.percentile(values_ms, PERCENTILES), values_ms.max(), values_ms.mean()]
    return {name: round(float(value), 3) for name, value in zip(names, found, strict=True)}


def summarize(record: Record, window: tuple[float, float], *, rate_per_s: float, connections: int, queued: int,
              lost: dict[str, int], client_cpu_s: float, send_span_s: float,
              precise_timer: bool = True) -> dict[str, Any]:
    """The figures of the requests *scheduled* in ``window``; a request with no response is an error."""
    scheduled = np.frombuffer(record.scheduled, dtype="f8")
    done = np.frombuffer(record.done, dtype="f8")
    status = np.frombuffer(record.status, dtype="u2")
    mask = (scheduled >= window[0]) & (scheduled < window[1])
    statuses = Counter(status[mask].tolist())
    ok = mask & (status == 200)
    duration_s = window[1] - window[0]
    answered = mask & (status != NO_RESPONSE)
    return {
        "target_rate_per_s": round(rate_per_s, 1),
        # Responses of the window's requests per second of window: the target unless the server fell behind.
        "achieved_rate_per_s": round(int(answered.sum()) / duration_s, 1),
        "connections": connections,
        "duration_s": duration_s,
        "requests": int(mask.sum()),
        "ok": int(ok.sum()),
        "non_200": {str(code): n for code, n in sorted(statuses.items()) if code not in (200, NO_RESPONSE)},
        "no_response": statuses.get(NO_RESPONSE, 0),
        "errors": lost,
        "queued": queued,
        "latency_ms": percentiles((done[ok] - scheduled[ok]) * 1000.0),
        "send_lag_ms": percentiles(np.frombuffer(record.lag, dtype="f8")[mask] * 1000.0),
        # How long the whole schedule took to send, against its length: above 1 the generator fell behind.
        "send_span_s": round(send_span_s, 3),
        "precise_timer": precise_timer,
        "client_cpu_s": round(client_cpu_s, 3),
        "mode": "open loop, round-robin over keep-alive connections, queued behind a busy connection (no pipelining)",
    }


def run(url: str, body: dict[str, Any], *, rate_per_s: float, duration_s: float, connections: int = 50,
        warmup_s: float = 1.0, cpus: Collection[int] | None = None) -> dict[str, Any]:
    """:func:`generate` in a child process on ``cpus`` (as wrk is run), its summary read from its output."""
    command = under_taskset(cpus, [
        # Not ``-m``: the package has imported this module already, and runpy would warn about it.
        sys.executable, "-c", "from bench.http_compare.openloop import main; main()", url, "--rate", str(rate_per_s),
        "--duration", str(duration_s), "--warmup", str(warmup_s), "--connections", str(connections),
        "--body", json.dumps(body, separators=(",", ":"))])
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT,
                              timeout=warmup_s + duration_s + 120)
    except subprocess.TimeoutExpired as exc:
        raise OpenLoopError(f"The open-loop generator did not finish: {exc}") from exc
    if done.returncode != 0:
        raise OpenLoopError(f"The open-loop generator exited with status {done.returncode}: "
                            f"{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.http_compare.openloop", description=__doc__.split("\n")[0])
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds at the same rate before the measurement")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--body", default='{"inputs":[{"name":"input-0","shape":[1,4],"datatype":"FP64",'
                                          '"data":[5.1,3.5,1.4,0.2]}]}', help="the JSON request body")
    args = parser.parse_args(argv)
    try:
        summary = asyncio.run(generate(args.url, args.body.encode(), rate_per_s=args.rate, duration_s=args.duration,
                                       connections=args.connections, warmup_s=args.warmup))
    except OpenLoopError as exc:
        parser.exit(1, f"{exc}\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
