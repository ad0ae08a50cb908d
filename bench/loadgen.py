"""The load generator: many WebSocket connections against a real server, closed or open loop.

Closed loop (``rate_per_s=None``): every connection keeps ``in_flight``
requests outstanding and sends a new one as each reply arrives, which finds
the server's maximum throughput at that concurrency. Its statistics cover the
requests *answered* inside the measurement window.

Open loop (``rate_per_s`` set): requests are scheduled at a fixed aggregate
rate, spread evenly over the connections and interleaved across client
processes, whatever the server does. Latency is measured from each request's
*scheduled* send time, so time a request spent waiting behind a slow server
(or a late client) counts; its statistics cover the requests *scheduled*
inside the window, and one still unanswered when the drain time runs out is
an error (``no_reply``).

The first ``warmup_s`` seconds are excluded from both. Clients run in
``processes`` separate processes (spawned, each with its own event loop) so
that the client does not share the server's interpreter; on a small machine
they still share its cores, which is why the report gives the CPU time the
client and the server each used.

Run it against any server that speaks the protocol::

    python -m bench.loadgen ws://127.0.0.1:8000/ws/v1/predict/ --model iris --rows 1 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import random
import resource
import sys
import time
import traceback
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import orjson

#: Request ids are integers: ``id_base + connection * ID_STRIDE + n``, unique
#: across connections and, with distinct ``id_base`` values, across runs.
ID_STRIDE = 10**9
#: Distinct input sets each connection cycles through.
PAYLOAD_VARIANTS = 16
#: Status of a request that got no reply before the drain time ran out.
UNANSWERED = -1
NO_REPLY = "no_reply"

clock = time.monotonic  # CLOCK_MONOTONIC: one clock for every process on the machine


class LoadError(Exception):
    """The load could not be run: the server refused connections or a client process failed."""


@dataclass(frozen=True)
class LoadSpec:
    """One load: what to send, how hard, for how long."""

    url: str
    model: str
    rows: int = 1
    #: "json" (text frames) or "msgpack" (binary frames).
    encoding: str = "json"
    connections: int = 32
    #: Closed loop: requests each connection keeps outstanding.
    in_flight: int = 8
    #: Open loop: the aggregate request rate over all connections; None for closed loop.
    rate_per_s: float | None = None
    duration_s: float = 10.0
    warmup_s: float = 2.0
    processes: int = 1
    #: After the window, how long to wait for replies still outstanding.
    drain_timeout_s: float = 10.0
    #: Features per row; by default read from the server's ``ready`` message.
    features: int | None = None
    id_base: int = 0
    seed: int = 0
    connect_timeout_s: float = 60.0

    @property
    def mode(self) -> str:
        return "closed" if self.rate_per_s is None else "open"

    def check(self) -> None:
        if self.encoding not in ("json", "msgpack"):
            raise ValueError(f"encoding must be 'json' or 'msgpack', not {self.encoding!r}.")
        for name in ("rows", "connections", "in_flight", "processes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}.")
        if self.connections >= ID_STRIDE // 1000:
            raise ValueError(f"At most {ID_STRIDE // 1000 - 1} connections are supported.")
        if self.processes > self.connections:
            raise ValueError(f"processes ({self.processes}) cannot exceed connections ({self.connections}).")
        if self.rate_per_s is not None and not self.rate_per_s > 0:
            raise ValueError(f"rate_per_s must be a positive number, not {self.rate_per_s}.")
        if self.duration_s <= 0 or self.warmup_s < 0 or self.drain_timeout_s < 0:
            raise ValueError("duration_s must be positive, warmup_s and drain_timeout_s not negative.")


# -- the client process ------------------------------------------------------------------


@dataclass
class _Job:
    spec: LoadSpec
    process_index: int
    connection_indices: list[int]


@dataclass
class WorkerResult:
    """What one client process saw; one entry per request it sent, in send order."""

    ids: bytes
    sent_at: bytes  # open loop: the scheduled time; closed loop: when it was sent
    lag: bytes  # actual send time minus scheduled time (open loop), else empty
    done_at: bytes  # NaN while unanswered
    status: bytes  # 0 ok, k > 0 an index into codes, -1 unanswered
    batch_size: bytes  # -1 where the reply had none
    codes: list[str]
    replies: int
    unmatched: dict[str, int]
    closed_by_server: int
    cpu_s: float
    features: int


class _Recorder:
    """Per-request columns, appended at send time and filled in at reply time."""

    def __init__(self) -> None:
        self.ids = array("q")
        self.sent_at = array("d")
        self.lag = array("d")
        self.done_at = array("d")
        self.status = array("b")
        self.batch_size = array("i")
        self.codes: dict[str, int] = {"ok": 0}
        self.replies = 0
        self.unmatched: Counter[str] = Counter()

    def sent(self, rid: int, at: float, lag: float | None) -> int:
        self.ids.append(rid)
        self.sent_at.append(at)
        if lag is not None:
            self.lag.append(lag)
        self.done_at.append(math.nan)
        self.status.append(UNANSWERED)
        self.batch_size.append(-1)
        return len(self.ids) - 1

    def answered(self, index: int, at: float, code: str, batch_size: int) -> None:
        status = self.codes.get(code)
        if status is None:
            status = self.codes[code] = len(self.codes)
        self.done_at[index] = at
        self.status[index] = status
        self.batch_size[index] = batch_size


def _row_values(rng: random.Random, features: int) -> list[float]:
    # Non-negative values with one decimal, like the demo data sets (iris in
    # centimetres, digits as 0-16 pixel intensities).
    return [round(rng.uniform(0.0, 8.0), 1) for _ in range(features)]


def _payload_prefixes(spec: LoadSpec, features: int, seed: int) -> list[Any]:
    """Request frames without their id, which is appended per request (cheaper than encoding each)."""
    rng = random.Random(seed)
    prefixes: list[Any] = []
    for _ in range(PAYLOAD_VARIANTS):
        fields = {
            "type": "predict",
            "model": spec.model,
            "inputs": [_row_values(rng, features) for _ in range(spec.rows)],
        }
        if spec.encoding == "json":
            prefixes.append(orjson.dumps(fields).decode()[:-1] + ',"id":')
        else:
            # A MessagePack map with one more entry than ``fields``: the id, packed last.
            head = bytes([0x80 | (len(fields) + 1)])
            body = b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in fields.items())
            prefixes.append(head + body + msgpack.packb("id"))
    return prefixes


class _Connection:
    def __init__(self, ws: Any, index: int, spec: LoadSpec, features: int, recorder: _Recorder) -> None:
        self.ws = ws
        self.recorder = recorder
        self.base = spec.id_base + index * ID_STRIDE
        self.binary = spec.encoding == "msgpack"
        self.features = features
        self.prefixes = _payload_prefixes(spec, features, spec.seed * 1_000_003 + index)
        self.next_n = 0
        self.sent = 0
        #: request id -> index in the recorder
        self.pending: dict[int, int] = {}
        self.closed = False

    async def send(self, at: float, scheduled: float | None = None) -> None:
        rid = self.base + self.next_n
        prefix = self.prefixes[self.next_n % PAYLOAD_VARIANTS]
        self.next_n += 1
        # JSON: '{"type":...,"inputs":[...],"id":' + id + '}'; MessagePack: the map with its id packed last.
        frame: str | bytes = prefix + msgpack.packb(rid) if self.binary else prefix + str(rid) + "}"
        if scheduled is None:
            index = self.recorder.sent(rid, at, None)
        else:
            index = self.recorder.sent(rid, scheduled, at - scheduled)
        self.pending[rid] = index
        self.sent += 1
        await self.ws.send(frame)

    def receive(self, message: str | bytes, at: float) -> bool:
        """Record one reply; True if it answered a request of ours."""
        recorder = self.recorder
        recorder.replies += 1
        body = orjson.loads(message) if type(message) is str else msgpack.unpackb(message, raw=False)
        kind = body.get("type")
        if kind == "prediction":
            code = "ok"
        elif kind == "error":
            code = str((body.get("error") or {}).get("code", "error"))
        else:
            recorder.unmatched[f"type:{kind}"] += 1
            return False
        index = self.pending.pop(body.get("id"), None)
        if index is None:
            recorder.unmatched[code] += 1
            return False
        batch_size = body.get("batch_size")
        recorder.answered(index, at, code, batch_size if type(batch_size) is int else -1)
        return True


async def _open(spec: LoadSpec, index: int, recorder: _Recorder) -> _Connection:
    from websockets.asyncio.client import connect

    ws = await connect(
        spec.url,
        compression=None,
        # Replies to pipelined requests arrive in bursts; a deeper receive
        # queue pauses the socket less often.
        max_queue=256,
        max_size=64 * 1024 * 1024,
        # A server busy at 100% CPU answers pings late; that is what is being measured, not a fault.
        ping_interval=None,
        open_timeout=spec.connect_timeout_s,
        close_timeout=2,
    )
    ready = orjson.loads(await asyncio.wait_for(ws.recv(), spec.connect_timeout_s))
    if ready.get("type") != "ready":
        await ws.close()
        raise LoadError(f"Expected a ready message on connect, got {ready!r}.")
    features = spec.features
    if features is None:
        model = (ready.get("models") or {}).get(spec.model)
        if model is None:
            await ws.close()
            offered = sorted(ready.get("models") or {})
            raise LoadError(f"The server does not offer the model {spec.model!r}: it offers {offered}.")
        features = len(model["inputs"])
    return _Connection(ws, index, spec, features, recorder)


async def _closed_loop(conn: _Connection, spec: LoadSpec, start: float, end: float) -> None:
    from websockets.exceptions import ConnectionClosed

    try:
        for _ in range(spec.in_flight):
            await conn.send(clock())
        async for message in conn.ws:
            now = clock()
            if conn.receive(message, now) and now < end:
                await conn.send(clock())
            elif now >= end and not conn.pending:
                return
    except ConnectionClosed:
        pass
    conn.closed = True


async def _reader(conn: _Connection) -> None:
    from websockets.exceptions import ConnectionClosed

    try:
        async for message in conn.ws:
            conn.receive(message, clock())
    except ConnectionClosed:
        pass
    conn.closed = True


async def _open_loop_sender(conns: list[_Connection], rate_per_s: float, phase_s: float, start: float,
                            end: float) -> None:
    """Send at this process's share of the rate, round-robin over its connections, catching up when late."""
    from websockets.exceptions import ConnectionClosed

    interval = 1.0 / rate_per_s
    k = 0
    n = len(conns)
    while True:
        scheduled = start + phase_s + k * interval
        if scheduled >= end:
            return
        delay = scheduled - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        conn = conns[k % n]
        k += 1
        if not conn.closed:
            try:
                await conn.send(clock(), scheduled)
            except ConnectionClosed:  # the request stays recorded, unanswered
                conn.closed = True


async def _cpu_at(when: float, into: list[float]) -> None:
    await asyncio.sleep(max(0.0, when - clock()))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    into.append(usage.ru_utime + usage.ru_stime)


async def _worker(job: _Job, control: Any) -> WorkerResult:
    spec = job.spec
    loop = asyncio.get_running_loop()
    recorder = _Recorder()
    conns = await asyncio.gather(*(_open(spec, index, recorder) for index in job.connection_indices))
    control.send(("connected", len(conns)))
    start = await loop.run_in_executor(None, control.recv)
    window_start = start + spec.warmup_s
    end = window_start + spec.duration_s
    cpu: list[float] = []
    cpu_tasks = [asyncio.ensure_future(_cpu_at(window_start, cpu)), asyncio.ensure_future(_cpu_at(end, cpu))]
    await asyncio.sleep(max(0.0, start - clock()))

    try:
        async with asyncio.timeout_at(end + spec.drain_timeout_s):
            if spec.rate_per_s is None:
                await asyncio.gather(*(_closed_loop(conn, spec, start, end) for conn in conns))
            else:
                share = spec.rate_per_s * len(conns) / spec.connections
                # Processes interleave: process p's requests fall between the others'.
                phase = job.process_index / spec.rate_per_s
                readers = [asyncio.ensure_future(_reader(conn)) for conn in conns]
                await _open_loop_sender(conns, share, phase, start, end)
                while any(conn.pending for conn in conns if not conn.closed):
                    await asyncio.sleep(0.01)
                for task in readers:
                    task.cancel()
    except TimeoutError:
        pass
    await asyncio.gather(*cpu_tasks)
    await asyncio.gather(*(conn.ws.close() for conn in conns), return_exceptions=True)
    return WorkerResult(
        ids=recorder.ids.tobytes(),
        sent_at=recorder.sent_at.tobytes(),
        lag=recorder.lag.tobytes(),
        done_at=recorder.done_at.tobytes(),
        status=recorder.status.tobytes(),
        batch_size=recorder.batch_size.tobytes(),
        codes=list(recorder.codes),
        replies=recorder.replies,
        unmatched=dict(recorder.unmatched),
        closed_by_server=sum(1 for conn in conns if conn.closed),
        cpu_s=cpu[1] - cpu[0] if len(cpu) == 2 else math.nan,
        features=conns[0].features,
    )


def _worker_main(job: _Job, control: Any) -> None:
    """Entry point of a client process: run the job, send back the result or the error."""
    try:
        result = asyncio.run(_worker(job, control))
    except BaseException as exc:  # the parent reports it with the traceback
        control.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    else:
        control.send(("result", result))
    finally:
        control.close()


# -- the parent: start the clients, aggregate ------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """CPU seconds used by ``pid`` and its live descendants (the platform's log writer process), from /proc."""
    total = 0.0
    for member in _process_tree(pid):
        try:
            with open(f"/proc/{member}/stat") as handle:
                fields = handle.read().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            if member == pid:
                raise
            continue  # a child that exited meanwhile
        # utime and stime are fields 14 and 15 of stat(5); fields[0] here is field 3.
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _process_tree(pid: int) -> list[int]:
    found, index = [pid], 0
    while index < len(found):
        current = found[index]
        index += 1
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    found.extend(int(child) for child in handle.read().split())
            except FileNotFoundError:
                continue
    return found


def proc_rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` and its live descendants (the log writer process) in MiB, from /proc."""
    total_kib = 0
    for member in _process_tree(pid):
        try:
            with open(f"/proc/{member}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total_kib += int(line.split()[1])
                        break
        except (FileNotFoundError, ProcessLookupError):
            if member == pid:
                return math.nan
    return total_kib / 1024.0


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
    server_cpu_s: float | None = None
    server_rss_mb: float | None = None
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
            "server_rss_mb": self.server_rss_mb,
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


def run_load(spec: LoadSpec, *, server_pid: int | None = None) -> LoadResult:
    """Run one load to completion and return every request's outcome.

    ``server_pid``, when given, is the server process whose CPU time over the
    measurement window and RSS at its end are reported.
    """
    spec.check()
    context = multiprocessing.get_context("spawn")
    jobs = [
        _Job(spec, p, list(range(p, spec.connections, spec.processes))) for p in range(spec.processes)
    ]
    processes = []
    pipes = []
    for job in jobs:
        parent_end, child_end = context.Pipe()
        process = context.Process(target=_worker_main, args=(job, child_end), daemon=True,
                                  name=f"loadgen-{job.process_index}")
        process.start()
        child_end.close()
        processes.append(process)
        pipes.append(parent_end)
    try:
        for pipe in pipes:
            kind, payload = _receive(pipe, spec.connect_timeout_s + 60.0)
            if kind != "connected":
                raise LoadError(f"A client process could not connect to {spec.url}: {payload}")
        start = clock() + 0.25
        for pipe in pipes:
            pipe.send(start)
        server_cpu_s = server_rss_mb = None
        if server_pid is not None:
            begin, end = start + spec.warmup_s, start + spec.warmup_s + spec.duration_s
            time.sleep(max(0.0, begin - clock()))
            cpu_begin = proc_cpu_s(server_pid)
            time.sleep(max(0.0, end - clock()))
            server_cpu_s = proc_cpu_s(server_pid) - cpu_begin
            server_rss_mb = proc_rss_mb(server_pid)
        results: list[WorkerResult] = []
        timeout = spec.warmup_s + spec.duration_s + spec.drain_timeout_s + 60.0
        for pipe in pipes:
            kind, payload = _receive(pipe, timeout)
            if kind != "result":
                raise LoadError(f"A client process failed: {payload}")
            results.append(payload)
    finally:
        for pipe in pipes:
            pipe.close()
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    return _aggregate(spec, start, results, server_cpu_s, server_rss_mb)


def _receive(pipe: Any, timeout_s: float) -> tuple[str, Any]:
    if not pipe.poll(timeout_s):
        raise LoadError(f"A client process did not answer within {timeout_s:.0f} s.")
    try:
        return pipe.recv()
    except EOFError:
        raise LoadError("A client process exited without a result.") from None


def _aggregate(spec: LoadSpec, start: float, results: list[WorkerResult], server_cpu_s: float | None,
               server_rss_mb: float | None) -> LoadResult:
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
        server_cpu_s=server_cpu_s,
        server_rss_mb=server_rss_mb,
    )


# -- command line ---------------------------------------------------------------------------------


def format_line(summary: dict[str, Any]) -> str:
    """One line of a summary, for progress output."""
    lat = summary["latency_ms"]
    errors = summary["window"]["errors"]
    batch = summary["batch_size"]
    target = f" @{summary['target_rate_per_s']:.0f}/s" if summary["target_rate_per_s"] else ""
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    server = summary.get("server_cpu_cores")
    return (
        f"{summary['mode']}{target} {summary['model']} x{summary['rows']}: "
        f"{summary['requests_per_s']:.0f} req/s, {summary['rows_per_s']:.0f} rows/s, "
        f"p50 {fmt(lat['p50'])} p99 {fmt(lat['p99'])} max {fmt(lat['max'])} ms, "
        f"batch mean {batch['mean']}, errors {errors or 0}, "
        f"cpu client {summary['client_cpu_cores']:.2f} server {'-' if server is None else f'{server:.2f}'}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="WebSocket URL, e.g. ws://127.0.0.1:8000/ws/v1/predict/")
    parser.add_argument("--model", required=True)
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--encoding", choices=["json", "msgpack"], default="json")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--in-flight", type=int, default=8, help="closed loop: requests in flight per connection")
    parser.add_argument("--rate", type=float, default=None, help="open loop: aggregate requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="measurement window, seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before the window, not measured")
    parser.add_argument("--processes", type=int, default=1, help="client processes")
    parser.add_argument("--server-pid", type=int, default=None, help="report this process's CPU and RSS")
    parser.add_argument("--json", metavar="PATH", help="write the summary here as JSON")
    args = parser.parse_args(argv)
    spec = LoadSpec(
        url=args.url, model=args.model, rows=args.rows, encoding=args.encoding, connections=args.connections,
        in_flight=args.in_flight, rate_per_s=args.rate, duration_s=args.duration, warmup_s=args.warmup,
        processes=args.processes,
    )
    try:
        summary = run_load(spec, server_pid=args.server_pid).summary()
    except (LoadError, ValueError, OSError) as exc:
        sys.exit(f"loadgen: {exc}")
    print(format_line(summary))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=2)


if __name__ == "__main__":
    main()

