"""The open-loop HTTP generator: its schedule, its response framing, its statistics, and a real server."""

from __future__ import annotations

import asyncio
import math
import os

import numpy as np
import pytest

from bench.http_compare import openloop
from bench.http_compare.openloop import (
    OpenLoopError,
    Record,
    ResponseReader,
    generate,
    percentiles,
    schedule,
    summarize,
)
from bench.http_compare.waker import Waker, clock

BODY = b'{"inputs":[{"name":"input-0","shape":[1,4],"datatype":"FP64","data":[5.1,3.5,1.4,0.2]}]}'


def test_schedule_is_evenly_spaced_at_the_rate():
    times = schedule(1000.0, 2.0, start=10.0)

    assert times.size == 2000
    assert times[0] == 10.0
    assert np.allclose(np.diff(times), 0.001)
    assert times[-1] < 12.0


def test_schedule_rounds_a_fractional_count_up():
    assert schedule(3.0, 1.5).size == 5  # 0, 1/3, 2/3, 1, 4/3


@pytest.mark.parametrize(("rate", "duration"), [(0, 1), (10, 0), (-5, 1)])
def test_schedule_refuses_a_rate_or_duration_that_is_not_positive(rate, duration):
    with pytest.raises(OpenLoopError, match="must both be positive"):
        schedule(rate, duration)


def test_percentiles_of_one_to_a_hundred():
    figures = percentiles(np.arange(1, 101, dtype="f8"))

    assert figures == {"p50": 50.5, "p90": 90.1, "p99": 99.01, "max": 100.0, "mean": 50.5}
    assert percentiles(np.empty(0)) == dict.fromkeys(["p50", "p90", "p99", "max", "mean"])


def test_reader_frames_responses_split_anywhere_and_back_to_back():
    one = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5\r\n\r\nhello"
    two = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nServer: x\r\n\r\n"
    stream = one + two + one
    for cut in range(1, len(stream)):
        reader = ResponseReader()
        assert reader.feed(stream[:cut]) + reader.feed(stream[cut:]) == [200, 404, 200]
        assert reader.buffer == b""


def test_reader_refuses_a_response_it_cannot_frame():
    with pytest.raises(OpenLoopError, match="Content-Length"):
        ResponseReader().feed(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")


def test_summary_counts_only_the_window_and_measures_from_the_schedule():
    record = Record.of(6)
    for k, (at, done, status) in enumerate([(0.5, 0.6, 200), (1.0, 1.002, 200), (1.5, 1.504, 500),
                                            (2.0, 2.010, 200), (2.5, math.nan, 0), (3.0, 3.1, 200)]):
        record.scheduled[k], record.done[k], record.status[k], record.lag[k] = at, done, status, 0.0001 * k

    summary = summarize(record, (1.0, 3.0), rate_per_s=2.0, connections=1, queued=0, lost={}, client_cpu_s=0.1,
                        send_span_s=3.0)

    assert summary["requests"] == 4
    assert summary["ok"] == 2
    assert summary["non_200"] == {"500": 1}
    assert summary["no_response"] == 1
    assert summary["achieved_rate_per_s"] == 1.5  # three answered in two seconds
    assert summary["latency_ms"]["max"] == pytest.approx(10.0)
    assert summary["latency_ms"]["p50"] == pytest.approx(6.0)
    assert summary["send_lag_ms"]["max"] == pytest.approx(0.4)


class SlowServer:
    """A real HTTP/1.1 keep-alive server that answers each request ``delay_s`` after reading it, one at a time."""

    def __init__(self, delay_s: float, status: int = 200) -> None:
        self.delay_s = delay_s
        self.status = status
        self.requests = 0
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.lower().split(b"\r\n")
                                  if line.startswith(b"content-length:")))
                await reader.readexactly(length)
                self.requests += 1
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 2\r\n\r\n{}" % self.status)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


async def load(server: SlowServer, **options):
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        return await generate(f"http://127.0.0.1:{port}/v2/models/iris/infer", BODY, **options)
    finally:
        listener.close()


async def test_a_fast_server_gets_every_request_on_schedule():
    server = SlowServer(delay_s=0.0)
    summary = await load(server, rate_per_s=500.0, duration_s=0.6, warmup_s=0.2, connections=4)

    assert server.connections == 4
    assert server.requests == 400
    assert summary["requests"] == summary["ok"] == 300
    assert summary["non_200"] == {} and summary["no_response"] == 0 and summary["errors"] == {}
    assert summary["achieved_rate_per_s"] == pytest.approx(500.0, rel=0.01)
    assert 0 < summary["latency_ms"]["p50"] < 50
    assert summary["send_lag_ms"]["p50"] < 5


async def test_a_slow_server_cannot_hide_its_backlog():
    # One connection, a request every 10 ms, each answered 30 ms after it is read: a closed loop would
    # see 30 ms per request; here the last of the 30 waits for the 29 before it, about 0.6 s in all.
    summary = await load(SlowServer(delay_s=0.03), rate_per_s=100.0, duration_s=0.3, warmup_s=0.0, connections=1)

    assert summary["ok"] == 30
    assert summary["queued"] == 29
    assert summary["latency_ms"]["p50"] > 100
    assert summary["latency_ms"]["max"] > 500


async def test_errors_are_counted_by_status():
    summary = await load(SlowServer(delay_s=0.0, status=404), rate_per_s=200.0, duration_s=0.2, warmup_s=0.0,
                         connections=2)

    assert summary["ok"] == 0
    assert summary["non_200"] == {"404": 40}
    assert summary["latency_ms"]["p50"] is None


async def test_a_refused_connection_is_a_clear_error():
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()

    with pytest.raises(OpenLoopError, match="Could not connect"):
        await generate(f"http://127.0.0.1:{port}/", BODY, rate_per_s=10.0, duration_s=0.1)


async def test_run_loads_from_a_pinned_child_process():
    server = SlowServer(delay_s=0.0)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    cpu = max(os.sched_getaffinity(0))
    try:
        summary = await asyncio.to_thread(openloop.run, f"http://127.0.0.1:{port}/v2", {"inputs": []},
                                          rate_per_s=200.0, duration_s=0.5, warmup_s=0.1, connections=3, cpus={cpu})
    finally:
        listener.close()

    assert server.connections == 3
    assert server.requests == 120
    assert summary["ok"] == summary["requests"] == 100
    assert summary["precise_timer"] is True


def test_run_reports_the_child_process_failure():
    with pytest.raises(OpenLoopError, match="Could not connect"):
        openloop.run("http://127.0.0.1:9/", {"inputs": []}, rate_per_s=10.0, duration_s=0.1, warmup_s=0.0,
                     cpus=os.sched_getaffinity(0))


async def test_the_waker_never_wakes_early_and_uses_a_timerfd_on_linux():
    waker = Waker(asyncio.get_running_loop())
    try:
        assert waker.precise
        lateness = []
        for _ in range(20):
            at = clock() + 0.0003
            await waker.until(at)
            lateness.append(clock() - at)
    finally:
        waker.close()

    assert min(lateness) >= 0
    # asyncio's own timers would be up to a millisecond late every time; allow for a busy machine.
    assert sorted(lateness)[len(lateness) // 2] < 0.002
