"""A real server while what it depends on changes under it: a key revoked mid-stream, Redis restarted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import time

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from bench.servers import free_port
from tests.frontend.conftest import create_user, login
from tests.support.services import manage

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]


def connect(server, path="/ws/v1/predict/", key=None, headers=None, **kwargs):
    headers = dict(headers or {})
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return websockets.connect(server.ws_url + path, additional_headers=headers, **kwargs)


async def predict(ws, rid):
    await ws.send(json.dumps({"id": rid, "model": "iris", "inputs": [IRIS_ROW]}))
    reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert reply["type"] == "prediction" and reply["id"] == rid, reply
    return reply


async def test_revoking_a_key_closes_its_open_connections_4401_within_two_seconds(start_daphne):
    server = start_daphne()
    doomed = manage("create_api_key", "revoked-mid-stream", env=server.env).stdout.strip()
    other = manage("create_api_key", "bystander", env=server.env).stdout.strip()
    async with connect(server, key=doomed) as first, connect(server, key=doomed) as second, \
            connect(server, key=other) as bystander:
        for ws in (first, second, bystander):
            assert json.loads(await ws.recv())["type"] == "ready"
            await predict(ws, "before")
        code = "from streaming.models import APIKey; APIKey.objects.get(name='revoked-mid-stream').revoke()"
        await asyncio.to_thread(manage, "shell", "-c", code, env=server.env)
        revoked_at = time.monotonic()
        for ws in (first, second):
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        assert time.monotonic() - revoked_at < 2.0
        await predict(bystander, "after")


def redis_server(port: int, directory) -> subprocess.Popen:
    """A Redis of this test's own on ``port``, answering when returned."""
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return process
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"redis-server did not start on port {port}")


async def first_stats(server, cookie) -> dict:
    async with connect(server, "/ws/v1/dashboard/", origin=server.url, headers={"Cookie": cookie}) as dashboard:
        assert json.loads(await asyncio.wait_for(dashboard.recv(), 10))["type"] == "hello"
        while True:
            message = json.loads(await asyncio.wait_for(dashboard.recv(), 10))
            if message["type"] == "stats":
                return message


async def test_a_dashboard_opened_after_redis_restarts_receives_its_statistics(start_daphne, tmp_path):
    port = free_port()
    redis = redis_server(port, tmp_path)
    try:
        server = start_daphne(env={"REDIS_URL": f"redis://127.0.0.1:{port}/0"})
        create_user(server, "redis-watcher", staff=True)
        cookie = login(server, "redis-watcher")
        assert (await first_stats(server, cookie))["processes"]
        # Restart Redis right after a snapshot went out, so that the next dashboard
        # reaches the channel layer before the publisher does.
        await first_stats(server, cookie)
        redis.terminate()
        redis.wait(10)
        redis = redis_server(port, tmp_path)
        # The very first dashboard after the restart: its group_add meets a stale pooled connection.
        message = await first_stats(server, cookie)
        assert message["processes"], message
    finally:
        redis.terminate()
        redis.wait(10)
