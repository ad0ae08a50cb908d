"""Setting, promoting and aborting a rollout through ``inference.rollout.changes``, with a real pool following it.

Two iris versions (logistic regressions with different ``C``) in a real
registry; the pool reconciles as a server process does when told of a change.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from channels.db import database_sync_to_async

from inference.exceptions import DeploymentConflict, InvalidDeployment
from inference.models import DeploymentEvent, MLModel
from inference.rollout import changes, shadow
from inference.rollout.shadow import ShadowReport, ShadowStatus

pytestmark = pytest.mark.django_db(transaction=True)

ROWS = np.array([[6.0, 2.9, 4.5, 1.5]])
WHO = {"actor": "tester", "source": "command"}


@database_sync_to_async
def run(change, *args, **kwargs):
    return change(*args, **kwargs)


@database_sync_to_async
def actions():
    return list(DeploymentEvent.objects.order_by("id").values_list("action", "version_number", "detail"))


@pytest.fixture
def reports(monkeypatch):
    seen: list[ShadowReport] = []
    # The only observer: the process's wired one would write comparisons to a database this test may not use.
    monkeypatch.setattr(shadow, "_observers", [])
    shadow.observe_shadows(seen.append)
    yield seen


async def two_versions(deploy):
    await deploy("iris", 1.0)
    await deploy("iris", 0.01, activate=False)


async def test_a_canary_is_loaded_beside_the_active_version_and_answers_its_share(pool, deploy):
    await two_versions(deploy)
    await run(changes.set_canary, "iris", 2, weight_pct=30, **WHO)
    await pool.reconcile()
    active = pool.entry("iris")
    assert active.version == 1 and pool.entry("iris", 2).ready
    chosen = [pool.route(active, ROWS, pinned=False, request_id=n)[0].version for n in range(3000)]
    assert 0.27 < chosen.count(2) / len(chosen) < 0.33
    assert {pool.route(active, ROWS, pinned=True, request_id=n)[0].version for n in range(300)} == {1}
    assert (await actions())[-1][:2] == ("canary_set", 2)


async def test_a_shadow_gets_a_copy_after_the_answer_and_its_outputs_are_compared(pool, deploy, reports):
    await two_versions(deploy)
    await run(changes.set_shadow, "iris", 2, sample_pct=100, **WHO)
    await pool.reconcile()
    active = pool.entry("iris")
    entry, key = pool.route(active, ROWS, pinned=False, request_id="r1")
    assert entry is active and key is not None
    result = await pool.submit(entry, ROWS, received_at=time.perf_counter(), key=key)
    assert not reports  # the copy waits for the reply's turn of the loop
    deadline = time.monotonic() + 5
    while not reports and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    (report,) = reports
    assert (report.model, report.primary_version, report.shadow_version) == ("iris", 1, 2)
    assert report.status == ShadowStatus.COMPARED and report.comparison.rows == 1
    shadow_out = (await pool.submit(pool.entry("iris", 2), ROWS, received_at=time.perf_counter())).outputs
    expected = float(np.abs(result.outputs - shadow_out).max())
    assert report.comparison.max_abs_diff == pytest.approx(expected)
    assert report.primary_ms > 0 and report.shadow_ms > 0


async def test_promote_makes_the_canary_active_keeps_the_old_one_loaded_and_ends_the_rollout(pool, deploy):
    await two_versions(deploy)
    await run(changes.set_canary, "iris", 2, weight_pct=10, **WHO)
    await run(changes.set_shadow, "iris", 2, sample_pct=50, **WHO)
    await pool.reconcile()
    promoted = await run(changes.promote, "iris", **WHO)
    assert promoted.version == 2
    await pool.reconcile()
    assert pool.entry("iris").version == 2 and pool.entry("iris", 1).ready  # the standby, for a rollback
    model = await run(MLModel.objects.get, name="iris")
    assert (model.canary_version, model.shadow_version) == (None, None)
    assert [a for a, _, _ in await actions()][-2:] == ["activated", "promoted"]
    with pytest.raises(DeploymentConflict):
        await run(changes.promote, "iris", **WHO)


async def test_abort_ends_the_rollout_and_the_pool_lets_the_canary_go(pool, deploy):
    await two_versions(deploy)
    await run(changes.set_canary, "iris", 2, weight_pct=50, **WHO)
    await pool.reconcile()
    await run(changes.abort, "iris", reason="errors", **WHO)
    await pool.reconcile()
    active = pool.entry("iris")
    assert {pool.route(active, ROWS, pinned=False, request_id=n)[0].version for n in range(200)} == {1}
    action, number, detail = (await actions())[-1]
    assert (action, number) == ("aborted", 2) and "canary v2 removed: errors" == detail
    with pytest.raises(DeploymentConflict):
        await run(changes.abort, "iris", **WHO)


async def test_an_automatic_abort_only_aborts_the_canary_it_judged(pool, deploy):
    await two_versions(deploy)
    await run(changes.set_canary, "iris", 2, weight_pct=50, **WHO)
    with pytest.raises(DeploymentConflict):
        await run(changes.abort, "iris", canary=3, actor="canary guard", source="guard")
    await run(changes.abort, "iris", canary=2, actor="canary guard", source="guard")
    assert (await actions())[-1][0] == "aborted"


@pytest.mark.parametrize("kwargs", [{"weight_pct": -1}, {"weight_pct": 101}, {"weight_pct": "x"},
                                    {"weight_pct": 5, "max_p99_ms": 0}, {"weight_pct": 5, "max_error_pct": 200}])
async def test_bad_percentages_and_limits_are_refused(pool, deploy, kwargs):
    await two_versions(deploy)
    with pytest.raises(InvalidDeployment):
        await run(changes.set_canary, "iris", 2, **kwargs, **WHO)


async def test_the_active_version_cannot_be_its_own_shadow_or_canary(pool, deploy):
    await two_versions(deploy)
    with pytest.raises(DeploymentConflict):
        await run(changes.set_shadow, "iris", 1, **WHO)
    with pytest.raises(DeploymentConflict):
        await run(changes.set_canary, "iris", 1, weight_pct=5, **WHO)


async def test_limits_are_kept_on_the_model(pool, deploy):
    await two_versions(deploy)
    await run(changes.set_canary, "iris", 2, weight_pct=5, max_error_pct=2, max_p99_ms=150, **WHO)
    model = await run(MLModel.objects.get, name="iris")
    assert (model.canary_max_error_pct, model.canary_max_p99_ms) == (2.0, 150.0)
    await pool.reconcile()
    assert pool.rollout("iris").canary_max_p99_ms == 150.0


async def test_retiring_the_shadow_or_the_canary_ends_its_part(pool, deploy):
    from inference import deployment

    await two_versions(deploy)
    await deploy("iris", 0.1, activate=False)
    await run(changes.set_shadow, "iris", 2, **WHO)
    await run(changes.set_canary, "iris", 3, weight_pct=50, **WHO)
    await run(deployment.retire, "iris", 2, **WHO)
    await run(deployment.retire, "iris", 3, **WHO)
    model = await run(MLModel.objects.get, name="iris")
    assert (model.shadow_version, model.canary_version) == (None, None)
    await pool.reconcile()
    assert not pool.rollout("iris").active
