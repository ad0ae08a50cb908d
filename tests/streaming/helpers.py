"""Driving the prediction consumer through channels' WebsocketCommunicator."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

import numpy as np
from channels.testing import WebsocketCommunicator

from platform_core.asgi import application

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]


@asynccontextmanager
async def connected(path="/ws/v1/predict/", *, key=None, headers=(), expect_ready=True, extensions=None):
    """A WebsocketCommunicator on the real ASGI application, closed afterwards.

    ``extensions``: ASGI scope extensions a server would offer (``platform.send_frame``).
    """
    all_headers = list(headers)
    if key is not None:
        all_headers.append((b"authorization", f"Bearer {key}".encode()))
    communicator = WebsocketCommunicator(application, path, headers=all_headers)
    if extensions is not None:
        communicator.scope["extensions"] = extensions
    ok, _ = await communicator.connect()
    assert ok, "the handshake was refused"
    try:
        if expect_ready:
            ready = await communicator.receive_json_from(timeout=5)
            assert ready["type"] == "ready", ready
        yield communicator
    finally:
        await communicator.disconnect()


async def settle(condition, timeout=1.0):
    """Yield to the event loop until ``condition()`` holds or ``timeout`` passes; the caller asserts."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)


async def receive_all(communicator, count, timeout=10):
    """Receive ``count`` JSON replies, keyed by id."""
    replies = {}
    for _ in range(count):
        reply = await communicator.receive_json_from(timeout=timeout)
        replies[reply["id"]] = reply
    return replies


async def expect_error(communicator, code, rid="any", timeout=5):
    reply = await communicator.receive_json_from(timeout=timeout)
    assert reply["type"] == "error", reply
    assert reply["error"]["code"] == code, reply
    if rid != "any":
        assert reply["id"] == rid, reply
    return reply


async def assert_still_serving(communicator, model="iris"):
    """The connection stays open and a valid request afterwards is answered."""
    await communicator.send_json_to({"id": "after", "model": model, "inputs": [IRIS_ROW]})
    reply = await communicator.receive_json_from(timeout=5)
    assert reply["type"] == "prediction" and reply["id"] == "after", reply


def wait_closed(communicator, timeout=5):
    return communicator.receive_output(timeout=timeout)


def sample_rows(service, name, count):
    entry = service.entry(name)
    rng = np.random.default_rng(7)
    return rng.uniform(0, 10, size=(count, entry.schema.n_features)).round(3).tolist()


def record_rows(monkeypatch, batcher):
    """Every row ``batcher`` hands its model from now on, recorded as the model call starts."""
    seen: list[list[float]] = []
    call = batcher.call

    def recording(batch):
        seen.extend(batch.tolist())
        return call(batch)

    monkeypatch.setattr(batcher, "call", recording)
    return seen


def slow_down(monkeypatch, batcher, delay_s):
    """Make every model call of ``batcher`` take at least ``delay_s`` longer."""
    call = batcher.call

    def slow(batch):
        time.sleep(delay_s)
        return call(batch)

    monkeypatch.setattr(batcher, "call", slow)
