"""One API-key rate for four workers, held in Redis; the per-process fallback while Redis is down, and the way back.

The module's server runs four workers on a Redis of its own, which the last
test kills and starts again. Connections stream at six times the key's rate;
what the key is allowed is counted from the replies (anything but
``rate_limited``).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from bench.servers import free_port
from tests.reliability.log_comparison import StreamingClient, api_key, until_answered
from tests.scaleout.platform import IRIS_ROW, RedisProcess, connections_by_worker, scrape, start_workers, total
from tests.support.commands import DemoData
from tests.support.daphne import DaphneServer
from tests.support.processes import ServiceUnavailable

WORKERS = 4
RATE_PER_S = 40.0
CONNECTIONS = 12
# Six times the key's rate in all: every worker would admit the whole rate on its own.
OFFERED_PER_CONNECTION_PER_S = 6 * RATE_PER_S / CONNECTIONS
LOCAL_GAUGE = "platform_rate_limits_local_processes"
FALLBACK_MESSAGE = "Redis does not answer"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    redis = RedisProcess(free_port(), tmp_path_factory.mktemp("redis") / "redis.log")
    try:
        redis.start()
    except ServiceUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield redis
    redis.kill()


@pytest.fixture(scope="module")
def server(iris_demo: DemoData, module_database: str, redis_server: RedisProcess,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaphneServer]:
    env = {"DATABASE_URL": module_database, "REDIS_URL": redis_server.url}
    try:
        started = start_workers(tmp_path_factory.mktemp("limits"), iris_demo, WORKERS, env)
    except ServiceUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield started
    started.stop()


class Load:
    """Connections of one key streaming at a fixed rate; counts what was admitted so far."""

    def __init__(self, server: DaphneServer, key: str, prefix: str) -> None:
        self.clients = [StreamingClient(server, key, f"{prefix}{number}", depth=32,
                                        rate_per_s=OFFERED_PER_CONNECTION_PER_S) for number in range(CONNECTIONS)]
        self.stop = asyncio.Event()
        self.task = asyncio.gather(*(client.run(self.stop) for client in self.clients))

    def admitted(self) -> int:
        return sum(reply.outcome != "rate_limited" for client in self.clients for reply in client.replies.values())

    def outcomes(self) -> set[str]:
        return {reply.outcome for client in self.clients for reply in client.replies.values()}

    async def window(self, seconds: float) -> tuple[int, float]:
        """What was admitted during the next ``seconds``, and how long that really was."""
        before, started = self.admitted(), time.monotonic()
        await asyncio.sleep(seconds)
        return self.admitted() - before, time.monotonic() - started

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)


def within(admitted: float, expected: float, tolerance: float) -> bool:
    return abs(admitted - expected) <= tolerance * expected


async def test_the_rate_holds_for_the_whole_deployment(server):
    load = Load(server, api_key(server, "deployment-rate", "--rate", str(RATE_PER_S)), "rate")
    await until_answered(load.clients, 1)
    spread = connections_by_worker(server)
    # The burst (one second of the rate) is spent by now; from here the bucket refills at the rate.
    await asyncio.sleep(1.5)
    admitted, elapsed_s = await load.window(5.0)
    await load.finish()
    expected = RATE_PER_S * elapsed_s
    print(f"{admitted} admitted in {elapsed_s:.2f} s at {RATE_PER_S:g}/s, {expected:.0f} expected; "
          f"connections per worker {spread}")
    assert sum(1 for count in spread.values() if count) >= 2  # per-process buckets would admit several times more
    assert within(admitted, expected, 0.10)
    assert load.outcomes() <= {"ok", "rate_limited", "invalid_input"}


def infer_statuses(url: str, key: str, seconds: float, senders: int, per_sender_s: float) -> list[tuple[float, int]]:
    """``senders`` threads each POSTing an iris infer ``per_sender_s`` times a second: (when, HTTP status)."""
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", "data": IRIS_ROW}]})
    started = time.monotonic()

    def send(number: int) -> list[tuple[float, int]]:
        statuses = []
        for n in range(int(seconds * per_sender_s)):
            time.sleep(max(0.0, started + (n + number / senders) / per_sender_s - time.monotonic()))
            request = urllib.request.Request(f"{url}/v2/models/iris/infer", data=body.encode(), method="POST",
                                             headers={"Authorization": f"Bearer {key}",
                                                      "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    statuses.append((time.monotonic(), response.status))
            except urllib.error.HTTPError as exc:
                statuses.append((time.monotonic(), exc.code))
        return statuses

    with ThreadPoolExecutor(senders) as pool:
        return [status for statuses in pool.map(send, range(senders)) for status in statuses]


async def test_the_rate_holds_for_the_whole_deployment_over_http(server):
    key = api_key(server, "deployment-rate-http", "--rate", str(RATE_PER_S))
    statuses = await asyncio.to_thread(infer_statuses, server.url, key, 6.5, CONNECTIONS, OFFERED_PER_CONNECTION_PER_S)
    # As on the WebSocket: leave the first 1.5 s (the burst), count the rest.
    begin = min(at for at, _ in statuses) + 1.5
    window = [status for at, status in statuses if at >= begin]
    elapsed_s = max(at for at, _ in statuses) - begin
    admitted = sum(1 for status in window if status == 200)
    print(f"/v2: {admitted} admitted in {elapsed_s:.2f} s at {RATE_PER_S:g}/s; statuses {Counter(window)}")
    assert set(window) <= {200, 429}
    assert within(admitted, RATE_PER_S * elapsed_s, 0.10)


async def test_redis_down_falls_back_per_process_and_comes_back(server, redis_server):
    load = Load(server, api_key(server, "redis-outage", "--rate", str(RATE_PER_S)), "outage")
    await until_answered(load.clients, 1)
    serving = sum(1 for count in connections_by_worker(server).values() if count)
    await asyncio.sleep(1.5)
    shared, shared_s = await load.window(2.0)

    redis_server.kill()
    await asyncio.sleep(0.5)
    alone, alone_s = await load.window(3.0)
    local_processes = total(scrape(server.url), LOCAL_GAUGE)
    fallbacks = server.log_tail(2000).count(FALLBACK_MESSAGE)

    redis_server.start()
    deadline = time.monotonic() + 10
    while total(scrape(server.url), LOCAL_GAUGE) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    back_after_s = 10 - (deadline - time.monotonic())
    await asyncio.sleep(1.5)  # the restarted Redis has a full bucket: let the burst pass
    again, again_s = await load.window(3.0)
    await load.finish()

    print(f"Redis up: {shared / shared_s:.1f}/s admitted; down: {alone / alone_s:.1f}/s on {serving} workers "
          f"({local_processes:g} processes said so, {fallbacks} log lines); back after {back_after_s:.1f} s: "
          f"{again / again_s:.1f}/s (key rate {RATE_PER_S:g}/s)")
    assert within(shared, RATE_PER_S * shared_s, 0.10)
    # Down: every serving worker admits the key's rate on its own, and nothing else fails.
    assert serving >= 2 and alone > 1.5 * RATE_PER_S * alone_s
    assert local_processes == serving and fallbacks == serving  # one log line per process, not per request
    assert load.outcomes() <= {"ok", "rate_limited", "invalid_input"}
    # Back: the deployment's limit again.
    assert total(scrape(server.url), LOCAL_GAUGE) == 0
    assert within(again, RATE_PER_S * again_s, 0.10)
