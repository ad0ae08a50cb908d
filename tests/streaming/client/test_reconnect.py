"""The client across a server that goes away: stopped gracefully (1001) or killed, then started again on its port."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from streaming.client import Backoff, PredictionClient
from tests.streaming.helpers import assert_outputs_match

from .conftest import create_key, iris_rows, predict_url
from .test_client import iris_expected

# Five requests every 20 ms: a steady stream that goes on while the server is down.
BURST, BURST_INTERVAL_S = 5, 0.02


class Stream:
    """Requests sent one row each, in bursts, until told to stop; counts the answers as they come."""

    def __init__(self, client: PredictionClient, rows: list[list[float]]) -> None:
        self.client = client
        self.rows = rows
        self.answered = 0
        self.stop = asyncio.Event()
        self.task = asyncio.ensure_future(self._send())

    async def _send(self) -> list[Any]:
        tasks: list[asyncio.Future[Any]] = []
        for start in range(0, len(self.rows), BURST):
            for row in self.rows[start:start + BURST]:
                tasks.append(asyncio.ensure_future(self.client.predict("iris", [row])))
                tasks[-1].add_done_callback(self._count)
            if self.stop.is_set():
                break
            await asyncio.sleep(BURST_INTERVAL_S)
        return await asyncio.gather(*tasks, return_exceptions=True)

    def _count(self, _: asyncio.Future[Any]) -> None:
        self.answered += 1


async def stream_through_a_restart(restartable, demo_data, stop_server: Callable[[Any], Awaitable[None]]):
    """Stream, stop the server with ``stop_server`` mid-stream, start it again; check every request's answer."""
    server = restartable.server
    key = await asyncio.to_thread(create_key, server, f"reconnect-{len(restartable.started)}")
    rows = iris_rows(20_000)
    async with PredictionClient(predict_url(server), key, backoff=Backoff(initial_s=0.05, max_s=1.0)) as client:
        stream = Stream(client, rows)
        while stream.answered < 100:
            await asyncio.sleep(0.02)
        await stop_server(server.process)
        await asyncio.to_thread(server.process.wait, 60)
        await asyncio.to_thread(restartable.restart)
        await asyncio.sleep(0.5)
        stream.stop.set()
        results = await asyncio.wait_for(stream.task, 120)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:3]
    # Every request has its own reply: a reply matched to the wrong request would show in the outputs.
    expected = await asyncio.to_thread(iris_expected, server, demo_data, rows[:len(results)])
    assert_outputs_match([reply["outputs"][0] for reply in results], expected)
    return client, results


def reconnects_logged(caplog) -> list[tuple[int, int]]:
    """(close code, requests sent again) for each reconnect the client logged."""
    return [(r.args[1], r.args[2]) for r in caplog.records if r.getMessage().endswith("requests to send again.")]


async def test_a_server_stopped_mid_stream_closes_1001_and_every_request_is_answered_once(
    restartable, demo_data, caplog
):
    caplog.set_level(logging.INFO, logger="streaming.client")

    async def terminate(process):
        process.send_signal(signal.SIGTERM)

    client, results = await stream_through_a_restart(restartable, demo_data, terminate)
    logged = reconnects_logged(caplog)
    # The server answered what it had accepted before it closed. A request the client sent as the close
    # frame crossed it on the wire was never read, so at most the client's window is sent again.
    # Reconnecting while it drained was refused (it stops listening, or closes a late handshake with 1001
    # before `ready`) and tried again with backoff: the only connection that ended is the drained one.
    assert [code for code, _ in logged] == [1001], caplog.text
    assert logged[0][1] <= 256, caplog.text  # the window: the server's PLATFORM_MAX_IN_FLIGHT
    assert client.reconnects == 1
    assert len(results) > 200


async def test_a_server_killed_mid_stream_drops_the_connection_and_the_unanswered_are_sent_again(
    restartable, demo_data, caplog
):
    caplog.set_level(logging.INFO, logger="streaming.client")

    async def hang_then_kill(process):
        # A server that stops answering and is then killed: requests sent meanwhile are out, unanswered.
        process.send_signal(signal.SIGSTOP)
        await asyncio.sleep(0.5)
        process.kill()

    client, results = await stream_through_a_restart(restartable, demo_data, hang_then_kill)
    assert client.reconnects == 1
    [(code, resent)] = reconnects_logged(caplog)
    assert code == 1006 and resent > 20, caplog.text
    assert len(results) > 200
