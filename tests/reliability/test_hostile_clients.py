"""A real server against hostile and careless clients: each frame gets its protocol reply, nothing else breaks."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.frontend.conftest import create_user, login
from tests.support.services import manage

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture(scope="module")
def server(daphne_server):
    return daphne_server


@pytest.fixture(scope="module")
def key(server):
    return manage("create_api_key", "hostile-client", env=server.env).stdout.strip()


def connect(server, path="/ws/v1/predict/", key=None, headers=None, **kwargs):
    headers = dict(headers or {})
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return websockets.connect(server.ws_url + path, additional_headers=headers, max_size=2**24, **kwargs)


async def ready(ws):
    message = json.loads(await ws.recv())
    assert message["type"] == "ready", message
    return message


async def still_serving(ws):
    await ws.send(json.dumps({"id": "still", "model": "iris", "inputs": [IRIS_ROW]}))
    reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert reply["type"] == "prediction" and reply["id"] == "still", reply


@pytest.mark.parametrize("where", ["top-level", "inputs"])
async def test_deeply_nested_json_is_invalid_json_and_the_connection_serves_on(server, key, where):
    nested = "[" * 100_000 + "]" * 100_000
    frame = nested if where == "top-level" else '{"id": 7, "model": "iris", "inputs": ' + nested + "}"
    async with connect(server, key=key) as ws:
        await ready(ws)
        await ws.send(frame)
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert reply["type"] == "error" and reply["error"]["code"] == "invalid_json", reply
        await still_serving(ws)


async def test_a_frame_between_one_and_four_mebibytes_is_served(server, key):
    """max_rows (1024) rows of the 64-feature model, about 1.3 MB of JSON in one frame."""
    rows = [[(i * 64 + j) * 0.000123456789012345 for j in range(64)] for i in range(1024)]
    frame = json.dumps({"id": "big", "model": "digits", "inputs": rows})
    assert 1 << 20 < len(frame) < 4 << 20
    async with connect(server, key=key) as ws:
        await ready(ws)
        await ws.send(frame)
        reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
    assert reply["type"] == "prediction" and len(reply["outputs"]) == 1024, str(reply)[:300]


@pytest.mark.parametrize("origin", ["null", "file://"])
async def test_null_and_file_origins_are_refused_with_403(server, key, origin):
    with pytest.raises(InvalidStatus) as refused:
        async with connect(server, key=key, origin=origin):
            pass
    assert refused.value.response.status_code == 403


async def test_an_integer_no_float_can_hold_leaves_the_dashboard_statistics_running(server, key):
    create_user(server, "hostile-watcher", staff=True)
    cookie = login(server, "hostile-watcher")
    async with connect(server, "/ws/v1/dashboard/", origin=server.url,
                       headers={"Cookie": cookie}) as dashboard:
        assert json.loads(await dashboard.recv())["type"] == "hello"
        async with connect(server, key=key) as ws:
            await ready(ws)
            await ws.send(json.dumps({"id": "huge", "model": "iris", "inputs": [[10**400, 1, 2, 3]]}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert reply["error"]["code"] == "invalid_input", reply
            await still_serving(ws)
        # Every second's snapshot still goes out, and it counts the refused request.
        seen = []
        for _ in range(6):
            message = json.loads(await asyncio.wait_for(dashboard.recv(), 5))
            if message["type"] == "stats":
                seen.append(message)
                if message["totals"]["errors_by_code"].get("invalid_input"):
                    break
    assert seen and seen[-1]["totals"]["errors_by_code"].get("invalid_input") == 1, seen[-1:]
    feed = [item["inputs"] for message in seen for item in message["recent"]]
    assert any("<401-digit integer>" in item for item in feed), feed
