"""Several workers on one host, through real processes: one set of metrics, revocation everywhere, replacement, drain.

One server with two workers serves the module; its tests run in order, the
last one stops it with SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from streaming.client import PredictionClient
from tests.reliability.log_comparison import (
    StreamingClient,
    api_key,
    compare,
    stream,
    until_answered,
    wait_for_replies_logged,
)
from tests.scaleout.platform import (
    IRIS_ROW,
    connections_by_worker,
    scrape,
    set_key_revoked,
    start_workers,
    total,
    wait_for_workers,
    worker_pids,
)
from tests.support.commands import DemoData
from tests.support.daphne import DaphneServer
from tests.support.processes import ServiceUnavailable

WORKERS = 2
CONNECTIONS = 8
REQUESTS_PER_CONNECTION = 25


@pytest.fixture(scope="module")
def server(iris_demo: DemoData, module_database: str, redis_url: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaphneServer]:
    env = {"DATABASE_URL": module_database, "REDIS_URL": redis_url, "PLATFORM_KEY_CHECK_INTERVAL_S": "1"}
    try:
        started = start_workers(tmp_path_factory.mktemp("workers"), iris_demo, WORKERS, env)
    except ServiceUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield started
    started.stop()


async def open_on_every_worker(server: DaphneServer, key: str, wanted: int) -> list[PredictionClient]:
    """At least ``wanted`` connected clients, more until every worker holds one of them."""
    clients: list[PredictionClient] = []
    while len(clients) < wanted or min(connections_by_worker(server).values()) == 0:
        if len(clients) >= 8 * wanted:
            raise AssertionError(f"{len(clients)} connections, not one on some worker: {connections_by_worker(server)}")
        clients.append(await PredictionClient(f"{server.ws_url}/ws/v1/predict/", key).connect())
    return clients


async def test_every_worker_serves_and_any_worker_reports_the_deployments_numbers(server):
    key = api_key(server, "metrics-sum")
    clients = await open_on_every_worker(server, key, CONNECTIONS)
    spread = connections_by_worker(server)
    try:
        replies = await asyncio.gather(*(client.predict("iris", [IRIS_ROW])
                                         for client in clients for _ in range(REQUESTS_PER_CONNECTION)))
    finally:
        await asyncio.gather(*(client.close() for client in clients))
    sent = len(clients) * REQUESTS_PER_CONNECTION
    assert len(replies) == sent and all(reply["type"] == "prediction" for reply in replies)

    # Each scrape is answered by whichever worker accepts it, and adds up every worker's files.
    deadline = time.monotonic() + 10
    while True:
        counted = [total(scrape(server.url), "platform_requests_total", outcome="ok") for _ in range(6)]
        if counted == [sent] * 6 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    print(f"{sent} requests over {len(clients)} connections, per worker {spread}; scrapes counted {counted}")
    assert counted == [sent] * 6
    assert len(spread) == WORKERS and min(spread.values()) >= 1


async def test_a_revoked_key_is_closed_on_every_worker_within_two_seconds(server, module_database):
    key = api_key(server, "revoked-everywhere")
    connections = []
    while len(connections) < CONNECTIONS or min(connections_by_worker(server).values()) == 0:
        assert len(connections) < 8 * CONNECTIONS, connections_by_worker(server)
        ws = await websockets.connect(f"{server.ws_url}/ws/v1/predict/",
                                      additional_headers={"Authorization": f"Bearer {key}"})
        assert json.loads(await ws.recv())["type"] == "ready"
        connections.append(ws)
    spread = connections_by_worker(server)

    async def closed_after(ws, revoked_at: float) -> tuple[int | None, float]:
        try:
            while True:
                await ws.recv()
        except ConnectionClosed:
            return ws.close_code, time.monotonic() - revoked_at

    revoked_at = time.monotonic()
    await asyncio.to_thread(set_key_revoked, module_database, "revoked-everywhere")
    results = await asyncio.wait_for(asyncio.gather(*(closed_after(ws, revoked_at) for ws in connections)), 10)
    print(f"{len(connections)} connections on workers {spread}: closed after "
          f"{max(after for _, after in results):.2f} s at most")
    assert [code for code, _ in results] == [4401] * len(connections)
    assert max(after for _, after in results) <= 2.0
    assert len(spread) == WORKERS and min(spread.values()) >= 1


async def test_a_killed_worker_is_replaced_while_the_others_serve(server):
    key = api_key(server, "replacement")
    clients = await open_on_every_worker(server, key, 4)
    victim, *survivors = worker_pids(server)
    try:
        os.kill(victim, signal.SIGKILL)
        await asyncio.sleep(0.5)
        # The victim's clients connect again: to its replacement, on the socket the parent kept.
        replies = await asyncio.gather(*(client.predict("iris", [IRIS_ROW]) for client in clients))
        assert all(reply["type"] == "prediction" for reply in replies)
        pids = await asyncio.to_thread(wait_for_workers, server, WORKERS, not_pids=[victim])
        print(f"{sum(client.reconnects for client in clients)} of {len(clients)} clients connected again")
    finally:
        await asyncio.gather(*(client.close() for client in clients))
    assert victim not in pids and set(survivors) <= set(pids)
    assert total(scrape(server.url), "platform_worker_restarts_total", cause="signal") == 1
    assert f"(pid {victim}) was killed by SIGKILL" in server.log_tail(400)
    async with PredictionClient(f"{server.ws_url}/ws/v1/predict/", key) as client:
        assert (await client.predict("iris", [IRIS_ROW]))["type"] == "prediction"


async def test_sigterm_to_the_parent_drains_every_worker(server, module_database):
    key = api_key(server, "drain")
    # Twice as many: the kernel spreads connections by address, and all of 16 on one of two workers is unlikely.
    clients = [StreamingClient(server, key, f"drain{number}", depth=16) for number in range(2 * CONNECTIONS)]
    load = asyncio.create_task(stream(clients, asyncio.Event()))
    await until_answered(clients, 5)
    spread = connections_by_worker(server)
    pids = worker_pids(server)
    metrics_dir = Path(psutil.Process(pids[0]).environ()["PROMETHEUS_MULTIPROC_DIR"])
    server.process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(load, 60)
    status = await asyncio.to_thread(server.process.wait, 60)

    print(f"Drained {len(clients)} connections on workers {spread}: "
          f"{sum(len(client.replies) for client in clients)} replies, closes {[c.close_code for c in clients]}")
    assert status == 0, server.log_tail()
    assert min(spread.values()) >= 1 and len(spread) == WORKERS
    assert [client.close_code for client in clients] == [1001] * len(clients)
    # What was accepted was answered before 1001; a frame still on the wire then has no reply and no prediction.
    records = [record for record in wait_for_replies_logged(module_database, clients, 30)
               if record.request_id.startswith("drain")]
    comparison = compare(clients, records)
    print(f"SIGTERM to the parent: {comparison.summary()}")
    comparison.assert_every_reply_logged_once()
    assert comparison.ok_unreceived == []
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)
    assert not metrics_dir.exists()  # the parent made it, and removed it
