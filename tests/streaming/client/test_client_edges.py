"""Edges of the client that a real platform does not produce on demand, against a small scripted WebSocket server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from http import HTTPStatus

import pytest
from websockets.asyncio.server import ServerConnection, serve

from streaming.client import Backoff, PredictionClient

READY = {"type": "ready", "protocol": 1, "max_in_flight": 2, "max_rows": 8, "models": {"m": {"version": 1}}}


class Scripted:
    """Answers each request after ``delay_s`` with its first input row as the output; tracks what is out."""

    def __init__(self, delay_s: float = 0.02) -> None:
        self.delay_s = delay_s
        self.out = 0
        self.most_out = 0
        self.received: list[int] = []

    async def handler(self, ws: ServerConnection) -> None:
        await ws.send(json.dumps(READY))
        async for frame in ws:
            request = json.loads(frame)
            self.received.append(request["id"])
            self.out += 1
            self.most_out = max(self.most_out, self.out)
            asyncio.ensure_future(self.reply(ws, request))

    async def reply(self, ws: ServerConnection, request: dict) -> None:
        await asyncio.sleep(self.delay_s)
        self.out -= 1
        outputs = [{"value": request["inputs"][0]}]
        await ws.send(json.dumps({"type": "prediction", "id": request["id"], "outputs": outputs}))


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[str, Scripted]]:
    script = Scripted()
    async with serve(script.handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws/v1/predict/", script


async def test_no_more_than_max_in_flight_is_out_and_every_reply_reaches_its_own_caller(scripted):
    url, script = scripted
    async with PredictionClient(url) as client:
        replies = await asyncio.gather(*(client.predict("m", [[i]]) for i in range(20)))
    assert [r["outputs"][0]["value"] for r in replies] == [[i] for i in range(20)]
    assert script.most_out == READY["max_in_flight"]


async def test_a_request_its_caller_stopped_waiting_for_does_not_stop_the_client(scripted):
    url, script = scripted
    script.delay_s = 0.2
    async with PredictionClient(url) as client:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.predict("m", [[1]]), 0.05)
        assert client.pending == 0
        # Its reply arrives later and is dropped; the connection serves on.
        reply = await client.predict("m", [[2]])
    assert reply["outputs"][0]["value"] == [2] and script.received == [1, 2]


class Draining(Scripted):
    """Closes its first connection with 1001, then refuses two handshakes the ways a draining server may."""

    def __init__(self) -> None:
        super().__init__()
        self.handshakes = 0

    def process_request(self, connection: ServerConnection, request: object) -> object:
        self.handshakes += 1
        if self.handshakes == 2:  # a proxy in front of it with no server to send the connection to
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "No server is available.\n")
        return None

    async def handler(self, ws: ServerConnection) -> None:
        if self.handshakes == 3:  # a handshake under way when the drain began: 1001 before `ready`
            await ws.close(1001)
        elif self.handshakes == 1:
            await ws.send(json.dumps(READY))
            await ws.close(1001)
        else:
            await super().handler(ws)


async def test_handshakes_refused_while_a_server_drains_are_tried_again_after_the_backoff():
    script = Draining()
    async with serve(script.handler, "127.0.0.1", 0, process_request=script.process_request) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws/v1/predict/"
        async with PredictionClient(url, backoff=Backoff(initial_s=0.01, max_s=0.05)) as client:
            reply = await asyncio.wait_for(client.predict("m", [[7]]), 5)
    assert reply["outputs"][0]["value"] == [7]
    # The refused attempts were failed attempts of one reconnect, not errors that end the client.
    assert script.handshakes == 4 and client.reconnects == 1
