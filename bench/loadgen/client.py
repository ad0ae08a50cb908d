"""One client process of the load generator: its connections, the closed or open loop, every request recorded.

``run_load`` starts each in its own spawned process with a ``Job`` and a
pipe: the process opens its connections, says ``connected``, waits for the
common start time, runs the load and sends back a ``WorkerResult`` (or the
error with its traceback). It records raw columns only; the statistics are
computed by the parent over every process's requests.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import resource
import traceback
from array import array
from collections import Counter
from dataclasses import dataclass
from typing import Any

import msgpack
import orjson

from ..pinning import pin_current_process
from .spec import ID_STRIDE, LoadError, LoadSpec, clock

#: Distinct input sets each connection cycles through.
PAYLOAD_VARIANTS = 16
#: Status of a request that got no reply before the drain time ran out.
UNANSWERED = -1


@dataclass
class Job:
    """What one client process runs: its share of the connections, and the CPUs it may use."""

    spec: LoadSpec
    process_index: int
    connection_indices: list[int]
    #: None: wherever the scheduler puts it.
    cpus: frozenset[int] | None = None


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
    #: The CPUs the process was allowed to run on.
    cpus: list[int]


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


async def _worker(job: Job, control: Any) -> WorkerResult:
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
        cpus=sorted(os.sched_getaffinity(0)),
    )


def worker_main(job: Job, control: Any) -> None:
    """Entry point of a client process: run the job, send back the result or the error."""
    try:
        pin_current_process(job.cpus)
        result = asyncio.run(_worker(job, control))
    except BaseException as exc:  # the parent reports it with the traceback
        control.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    else:
        control.send(("result", result))
    finally:
        control.close()
