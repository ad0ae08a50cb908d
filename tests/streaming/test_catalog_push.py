"""Open prediction connections are sent the new catalog, unasked, when what their key sees changes.

The registry changes through ``inference.deployment`` (as the admin, the
commands and the deployment API change it); the pool is the process-wide one
the consumers use.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import skops.io
from channels.db import database_sync_to_async
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

import inference.service as service_module
from inference import deployment
from inference.service import InferenceService
from platform_core import modelsync
from tests.streaming.helpers import IRIS_ROW, connected

pytestmark = pytest.mark.django_db(transaction=True)

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture
def pool(model_store, monkeypatch):
    """An empty pool as the process-wide one; it follows the registry when the test reconciles it."""
    pool = InferenceService()
    monkeypatch.setattr(service_module, "_service", pool)
    yield pool
    pool.shutdown()


@pytest.fixture
def deploy(tmp_path):
    """``await deploy(name, c)``: register a logistic regression on iris as the next version of ``name``, active."""
    iris = load_iris()
    labels = np.asarray(iris.target_names)[iris.target]

    @database_sync_to_async
    def register(name: str, c: float, *, activate: bool = True) -> int:
        path = tmp_path / f"{name}-{c}.skops"
        skops.io.dump(LogisticRegression(C=c, max_iter=2000).fit(iris.data, labels), path)
        schema = deployment.ModelSchema(task="classification", inputs=FEATURES, outputs="label and probabilities")
        version = deployment.register(name, path, "sklearn", actor="test", source="command", activate=activate,
                                      schema=schema)
        return version.version

    return register


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
