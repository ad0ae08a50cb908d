"""Open prediction connections are sent the new catalog, unasked, when what their key sees changes.

The registry changes through ``inference.deployment`` (as the admin, the
commands and the deployment API change it); the pool is the process-wide one
the consumers use.
"""

from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async

from inference import deployment
from platform_core import modelsync
from tests.streaming.helpers import IRIS_ROW, connected
from tests.support.deploying import FEATURES

pytestmark = pytest.mark.django_db(transaction=True)




@database_sync_to_async
def activate(name: str, version: int) -> None:
    deployment.activate(name, version, actor="test", source="command")


async def nothing_more(ws, timeout: float = 0.3) -> None:
    assert await ws.receive_nothing(timeout=timeout), await ws.receive_json_from()


async def test_connections_whose_key_sees_the_model_are_sent_the_new_catalog(pool, deploy, api_key):
    await deploy("iris", 1.0)
    await deploy("flowers", 1.0)
    await pool.reconcile()
    everything, flowers_only = api_key("everything"), api_key("flowers-only", models=["flowers"])
    async with connected(key=everything) as ws, connected(key=flowers_only) as other:
        await deploy("iris", 0.01)
        await pool.reconcile()
        pushed = await ws.receive_json_from(timeout=5)
        assert pushed["type"] == "models"
        assert {name: entry["version"] for name, entry in pushed["models"].items()} == {"iris": 2, "flowers": 1}
        assert pushed["models"]["iris"]["inputs"] == FEATURES
        await nothing_more(other)
        # Requests now go to the new version.
        await ws.send_json_to({"id": 1, "model": "iris", "inputs": [IRIS_ROW]})
        assert (await ws.receive_json_from(timeout=5))["version"] == 2

        # Rolled back: told again, and nothing is sent when nothing changed.
        await activate("iris", 1)
        await pool.reconcile()
        assert (await ws.receive_json_from(timeout=5))["models"]["iris"]["version"] == 1
        await pool.reconcile()
        await nothing_more(ws)
        await nothing_more(other)

        # A change to what the restricted key sees reaches it, with its own catalog only.
        await deploy("flowers", 0.01)
        await pool.reconcile()
        assert (await other.receive_json_from(timeout=5))["models"] == {
            "flowers": {"version": 2, "inputs": FEATURES, "outputs": "label and probabilities"}
        }
        assert set((await ws.receive_json_from(timeout=5))["models"]) == {"iris", "flowers"}


async def test_a_change_committed_anywhere_reaches_the_connections_through_the_channel_layer(pool, deploy, api_key):
    await deploy("iris", 1.0)
    await pool.reconcile()
    # A long interval: only the catalog_changed message can make this process reconcile in time.
    modelsync.start(pool.reconcile, interval_s=60)
    try:
        async with connected(key=api_key()) as ws:
            await asyncio.sleep(0.1)  # the sync's own first reconcile, and its listener joining the group
            await deploy("iris", 0.01)  # commits in a thread; catalog_changed is sent on commit
            pushed = await ws.receive_json_from(timeout=2)
            assert pushed == {"type": "models", "models": {
                "iris": {"version": 2, "inputs": FEATURES, "outputs": "label and probabilities"}}}
    finally:
        await modelsync.stop()
