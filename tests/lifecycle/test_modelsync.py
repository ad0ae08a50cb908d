"""A server process's model sync: the group message, the periodic safety net, a channel layer that is down."""

from __future__ import annotations

import asyncio
import runpy
import time

import pytest
from channels.layers import get_channel_layer
from django.core.exceptions import ImproperlyConfigured

from platform_core import modelsync
from platform_core.modelsync import GROUP, MESSAGE_TYPE, ModelSync
from tests.support.services import REPO_ROOT


class CountingReconcile:
    """Stands in for ``InferenceService.reconcile``: counts its calls; each takes ``duration_s``."""

    def __init__(self, duration_s: float = 0.0) -> None:
        self.calls = 0
        self.duration_s = duration_s
        self.running = 0
        self.overlapped = False

    async def __call__(self) -> list:
        self.running += 1
        self.overlapped |= self.running > 1
        self.calls += 1
        await asyncio.sleep(self.duration_s)
        self.running -= 1
        return []


class BrokenLayer:
    """A channel layer whose server is down: every call fails after a moment."""

    def __init__(self) -> None:
        self.attempts = 0

    async def new_channel(self) -> str:
        return "specific.broken!1"

    async def _fail(self, *args, **kwargs):
        self.attempts += 1
        await asyncio.sleep(0.01)
        raise ConnectionError("Error connecting to Redis: connection refused")

    group_add = group_discard = group_send = receive = _fail


async def eventually(condition, timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("The condition never held.")
        await asyncio.sleep(0.01)


@pytest.fixture
async def started():
    syncs: list[ModelSync] = []

    def start(reconcile, interval_s: float) -> ModelSync:
        sync = ModelSync(reconcile, interval_s=interval_s)
        sync.start()
        syncs.append(sync)
        return sync

    yield start
    for sync in syncs:
        await sync.stop()


async def test_it_reconciles_once_at_start_and_then_periodically_without_any_message(started):
    reconcile = CountingReconcile()
    started(reconcile, interval_s=0.05)
    await eventually(lambda: reconcile.calls >= 4)


async def test_a_message_to_the_group_makes_it_reconcile(started):
    reconcile = CountingReconcile()
    sync = started(reconcile, interval_s=60)
    await eventually(lambda: sync.runs == 1)  # the one at start
    layer = get_channel_layer()
    # The listener joins the group as it starts.
    await asyncio.sleep(0.05)
    await layer.group_send(GROUP, {"type": MESSAGE_TYPE, "model": "iris", "action": "activated"})
    await eventually(lambda: sync.runs == 2)
    await layer.group_send(GROUP, {"type": "something.else"})
    await asyncio.sleep(0.1)
    assert sync.runs == 2


async def test_requests_during_a_reconcile_make_one_more_and_never_two_at_once(started):
    reconcile = CountingReconcile(duration_s=0.2)
    sync = started(reconcile, interval_s=60)
    await eventually(lambda: reconcile.running == 1)
    for _ in range(10):
        sync.request()
    await eventually(lambda: sync.runs == 2)
    await asyncio.sleep(0.3)
    assert reconcile.calls == 2 and not reconcile.overlapped


async def test_a_channel_layer_that_is_down_leaves_the_periodic_reconcile_running(started, monkeypatch, caplog):
    layer = BrokenLayer()
    monkeypatch.setattr(modelsync, "get_channel_layer", lambda: layer)
    reconcile = CountingReconcile()
    started(reconcile, interval_s=0.05)
    await eventually(lambda: reconcile.calls >= 4 and layer.attempts >= 2)
    assert "Model-change messages are not reaching this process" in caplog.text


async def test_announcing_to_a_channel_layer_that_is_down_neither_raises_nor_waits_long(monkeypatch, caplog):
    monkeypatch.setattr(modelsync, "get_channel_layer", BrokenLayer)
    began = time.monotonic()
    # From a thread without an event loop, as a manage.py command or the admin sends it.
    await asyncio.to_thread(modelsync.announce, None, model="iris", action="activated")
    assert time.monotonic() - began < modelsync.ANNOUNCE_TIMEOUT_S + 1
    assert "Could not tell the server processes that iris changed" in caplog.text
    # From the event loop: it does not wait at all.
    modelsync.announce(None, model="iris", action="activated")
    await asyncio.sleep(0.1)


def test_the_interval_must_be_a_positive_number_of_seconds(monkeypatch, tmp_path):
    monkeypatch.setenv("PLATFORM_DATA_DIR", str(tmp_path))
    for raw in ("0", "-1", "soon", "inf"):
        monkeypatch.setenv("PLATFORM_MODEL_RECONCILE_S", raw)
        with pytest.raises(ImproperlyConfigured, match="PLATFORM_MODEL_RECONCILE_S must be a positive number"):
            runpy.run_path(str(REPO_ROOT / "platform_core" / "settings.py"))
    monkeypatch.setenv("PLATFORM_MODEL_RECONCILE_S", "0.5")
    assert runpy.run_path(str(REPO_ROOT / "platform_core" / "settings.py"))["PLATFORM_MODEL_RECONCILE_S"] == 0.5
    with pytest.raises(ValueError, match="interval_s must be a positive number"):
        ModelSync(CountingReconcile(), interval_s=0)
