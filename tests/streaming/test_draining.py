"""The graceful drain: a connection that opens once it has begun goes away at once."""

from __future__ import annotations

from streaming.draining import Drain, drain_connections, live_consumers
from tests.streaming.helpers import connected


async def test_a_connection_opened_after_the_drain_began_is_closed_with_1001(service, api_key):
    await drain_connections()
    assert Drain.started
    async with connected(key=api_key(), expect_ready=False) as ws:
        assert await ws.receive_output(timeout=5) == {"type": "websocket.close", "code": 1001}
        assert not list(live_consumers)  # never drained, so never counted as open


async def test_before_a_drain_connections_are_served(service, api_key):
    assert not Drain.started
    async with connected(key=api_key()) as ws:
        await ws.send_json_to({"type": "ping", "id": "p"})
        assert (await ws.receive_json_from(timeout=5))["type"] == "pong"
