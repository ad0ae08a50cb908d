"""``/ws/v1/dashboard/`` through the real ASGI application: who may watch, and what they see."""

from __future__ import annotations

import asyncio

import pytest
from channels.testing import WebsocketCommunicator
from django.test import Client

from frontend.consumers import close_dashboards
from monitoring import events
from platform_core.asgi import application
from streaming.draining import Drain
from tests.frontend.conftest import prediction

PATH = "/ws/v1/dashboard/"
ORIGIN = (b"origin", b"http://localhost:8000")

pytestmark = pytest.mark.django_db(transaction=True)


def session_cookie(user) -> tuple[bytes, bytes]:
    client = Client()
    client.force_login(user)
    return (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())


@pytest.fixture
def staff_cookie(staff_user):
    return session_cookie(staff_user)


@pytest.fixture
def plain_cookie(plain_user):
    return session_cookie(plain_user)


async def closed_with(communicator) -> int | None:
    message = await communicator.receive_output(timeout=3)
    assert message["type"] == "websocket.close", message
    return message.get("code")


async def test_an_anonymous_visitor_is_closed_with_4401(aggregator):
    communicator = WebsocketCommunicator(application, PATH, headers=[ORIGIN])
    connected, _ = await communicator.connect()
    assert connected
    assert await closed_with(communicator) == 4401
    assert aggregator.dashboards == 0


async def test_a_user_who_is_not_staff_is_closed_with_4403(aggregator, plain_cookie):
    communicator = WebsocketCommunicator(application, PATH, headers=[ORIGIN, plain_cookie])
    connected, _ = await communicator.connect()
    assert connected
    assert await closed_with(communicator) == 4403
    assert aggregator.dashboards == 0


@pytest.mark.parametrize("headers", [[], [(b"origin", b"https://evil.example")]], ids=["no-origin", "foreign-origin"])
async def test_a_handshake_without_an_allowed_origin_is_refused(aggregator, staff_cookie, headers):
    communicator = WebsocketCommunicator(application, PATH, headers=[*headers, staff_cookie])
    connected, _ = await communicator.connect()
    assert not connected
    assert aggregator.dashboards == 0


async def test_staff_see_the_platform_once_a_second(aggregator, staff_cookie):
    communicator = WebsocketCommunicator(application, PATH, headers=[ORIGIN, staff_cookie])
    connected, _ = await communicator.connect()
    assert connected
    try:
        hello = await communicator.receive_json_from(timeout=3)
        assert hello["type"] == "hello"
        assert hello["user"] == "operator"
        assert hello["process"] == aggregator.process_id

        for _ in range(3):
            events.prediction(prediction("iris", rows=2))
        events.prediction(prediction("iris", "invalid_input"))

        message = None
        for _ in range(5):
            message = await communicator.receive_json_from(timeout=3)
            assert message["type"] == "stats"
            if message["totals"]["predictions"] == 3:
                break
        assert message["totals"]["predictions"] == 3, message
        assert message["totals"]["rows"] == 6
        assert message["totals"]["errors_by_code"] == {"invalid_input": 1}
        assert [process["id"] for process in message["processes"]] == [aggregator.process_id]
        assert message["dashboards"] == 1
        assert message["connections"] == 0
        assert message["models"]["iris"]["active_version"] == 2
        assert len(message["recent"]) == 4

        # One message a second, not one per prediction.
        times = []
        for _ in range(3):
            for _ in range(50):
                events.prediction(prediction("iris"))
            message = await communicator.receive_json_from(timeout=3)
            times.append(message["time"])
        assert all(0.8 < later - earlier < 1.2 for earlier, later in zip(times, times[1:], strict=False)), times
        assert message["totals"]["predictions"] == 153
    finally:
        await communicator.disconnect()
    assert aggregator.dashboards == 0
    assert aggregator.connections == 0


async def test_a_dashboard_that_opens_once_the_server_drains_is_closed_with_1001_before_hello(
        aggregator, staff_cookie, monkeypatch):
    monkeypatch.setattr(Drain, "started", True)
    communicator = WebsocketCommunicator(application, PATH, headers=[ORIGIN, staff_cookie])
    connected, _ = await communicator.connect()
    assert connected
    assert await closed_with(communicator) == 1001
    assert aggregator.dashboards == 0


async def test_the_shutdown_closes_open_dashboards_with_1001(aggregator, staff_cookie):
    communicator = WebsocketCommunicator(application, PATH, headers=[ORIGIN, staff_cookie])
    connected, _ = await communicator.connect()
    assert connected
    assert (await communicator.receive_json_from(timeout=3))["type"] == "hello"
    closing = asyncio.ensure_future(close_dashboards())
    assert await closed_with(communicator) == 1001
    assert not closing.done()  # it waits for the browser's half of the closing handshake
    await communicator.disconnect()
    await asyncio.wait_for(closing, 1)
    assert aggregator.dashboards == 0
