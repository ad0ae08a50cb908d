"""What the metrics and the dashboard show of a swap, as ``platform_core.wiring`` connects them to the pool."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from prometheus_client import REGISTRY

from inference import deployment
from inference.artifacts import artifact_path
from monitoring import livestats, metrics
from platform_core import wiring
from platform_core.wiring import serving_state

pytestmark = pytest.mark.django_db(transaction=True)



def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_metrics_count_swaps_loads_and_failures(pool, deploy):
    swaps_before = sample("platform_model_swaps_total", model="iris")
    loads_before = sample("platform_model_load_seconds_count", model="iris")
    failures_before = sample("platform_model_load_failures_total", model="iris", stage="load")
    await deploy("iris", 1.0)
    await pool.reconcile()
    assert sample("platform_model_active_version", model="iris") == 1
    await deploy("iris", 0.01)
    await pool.reconcile()
    assert sample("platform_model_active_version", model="iris") == 2
    assert sample("platform_model_swaps_total", model="iris") == swaps_before + 1
    assert sample("platform_model_load_seconds_count", model="iris") == loads_before + 2
    assert sample("platform_model_load_seconds_sum", model="iris") > 0

    # A file that changed behind the registry's back fails to load in the server process.
    version = await deploy("iris", 100.0, activate=False)
    artifact_path(version.artifact).write_bytes(b"changed")
    # Activated without the deployment's own check, as if the file changed right after it.
    await database_sync_to_async(version.activate)()
    await pool.reconcile()
    assert sample("platform_model_load_failures_total", model="iris", stage="load") == failures_before + 1
    assert sample("platform_model_active_version", model="iris") == 2


async def test_a_version_refused_by_validation_is_counted(pool, deploy, tmp_path):
    await deploy("iris", 1.0)
    await pool.reconcile()
    before = sample("platform_model_load_failures_total", model="iris", stage="validation")
    bad = tmp_path / "bad.skops"
    bad.write_bytes(b"not a skops archive")
    with pytest.raises(deployment.VersionFailed):
        await database_sync_to_async(deployment.register)("iris", bad, "sklearn", actor="test", source="command")
    assert sample("platform_model_load_failures_total", model="iris", stage="validation") == before + 1


async def test_the_scrape_and_the_dashboard_follow_the_active_version(pool, deploy, monkeypatch):
    await deploy("iris", 1.0)
    await pool.reconcile()
    await deploy("iris", 0.01)
    await pool.reconcile()
    [iris] = serving_state()
    assert iris.active_version == 2
    assert {state.version for state in iris.versions if state.loaded} == {1, 2}
    monkeypatch.setattr(livestats.aggregator, "serving_state", wiring.serving_state)
    states = livestats.aggregator.snapshot()["models"]
    assert states["iris"]["active_version"] == 2
    assert states["iris"]["loaded_versions"] == [1, 2] and states["iris"]["failed_versions"] == []
    assert sample("platform_model_active_version", model="iris") == 2


async def test_a_process_that_starts_reports_its_active_versions(pool, deploy):
    await deploy("iris", 1.0)
    await deploy("iris", 0.01)
    metrics.MODEL_ACTIVE_VERSION.labels("iris").set(0)
    await database_sync_to_async(pool.load_all)()
    assert sample("platform_model_active_version", model="iris") == 2
    assert [state.version for state in serving_state()[0].versions if state.loaded] == [2]
