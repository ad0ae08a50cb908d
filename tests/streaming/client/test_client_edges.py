"""Edges of the client that a real platform does not produce on demand, against a small scripted WebSocket server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.server import ServerConnection, serve

from streaming.client import PredictionClient

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
