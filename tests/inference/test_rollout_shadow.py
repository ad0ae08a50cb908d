"""The shadow runner: the copy waits for the answer, is dropped first under load (counted), and never fails a client."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from inference.batching import BatchResult, DynamicBatcher
from inference.rollout import shadow
from inference.rollout.plan import Rollout
from inference.rollout.shadow import DropReason, ShadowRunner, ShadowStatus
from inference.schema import InputSchema
from inference.served import ServedModel, ServedVersion
from tests.inference.conftest import FakeModel, answers, rows_for, wait_until_started

KEY = 0  # in every sample


@pytest.fixture
def reports(monkeypatch):
    seen = []
    # The only observer: the process's wired one would write comparisons to a database this test may not use.
    monkeypatch.setattr(shadow, "_observers", [])
    shadow.observe_shadows(seen.append)
    yield seen


@pytest.fixture
async def pair():
    """An active version and a shadow, each behind its own batcher and thread, with models the tests hold."""
    models = {1: FakeModel(), 2: FakeModel()}
    executors = [ThreadPoolExecutor(max_workers=1) for _ in models]
    entries = {}
    for (number, model), executor in zip(models.items(), executors, strict=True):
        entry = ServedVersion(name="m", version=number, task="regression", schema=InputSchema(["a", "b", "c"]),
                              outputs="y")
        entry.batcher = DynamicBatcher(model, executor=executor, max_batch_size=4, max_delay_ms=0,
                                       queue_capacity=4, name=f"m v{number}")
        entries[number] = entry
    info = ServedModel(name="m", task="regression", inputs=["a", "b", "c"], outputs="y", active_version=1,
                       versions=entries, rollout=Rollout(shadow_version=2))
    yield info, models
    for model in models.values():
        model.release()
    for entry in entries.values():
        await asyncio.wait_for(entry.batcher.close(), 5)
    for executor in executors:
        executor.shutdown(wait=True)


async def settle(reports, n):
    for _ in range(500):
        if len(reports) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(reports)} reports, not {n}")


async def test_the_answer_does_not_wait_for_a_shadow_that_hangs(pair, reports):
    info, models = pair
    runner = ShadowRunner(max_pending=10, timeout_s=5)
    models[2].hold()
    primary = info.versions[1].batcher.submit(rows_for(1), timeout_s=5)
    runner.follow(info, info.versions[1], rows_for(1), primary, KEY)
    (result,) = await answers(primary)
    assert result.outputs.tolist() == [1001.0]
    await wait_until_started(models[2])  # the copy runs after the answer
    assert not reports and runner.pending == 1
    models[2].release()
    await settle(reports, 1)
    assert reports[0].status == ShadowStatus.COMPARED and reports[0].comparison.agreed == 1


async def test_copies_past_the_bounds_are_dropped_and_counted_and_the_clients_are_all_answered(pair, reports):
    info, models = pair
    runner = ShadowRunner(max_pending=3, timeout_s=5)
    models[2].hold()
    futures = []
    for n in range(8):
        future = info.versions[1].batcher.submit(rows_for(n), timeout_s=5)
        runner.follow(info, info.versions[1], rows_for(n), future, KEY)
        futures.append(future)
        await asyncio.sleep(0.02)
    assert len(await answers(*futures)) == 8
    await settle(reports, 5)
    dropped = [r.reason for r in reports if r.status == ShadowStatus.DROPPED]
    assert dropped == [DropReason.SHADOW_BUSY.value] * 5
    models[2].release()
    await settle(reports, 6)
    compared = [r for r in reports if r.status == ShadowStatus.COMPARED]
    # Compared together, in one report for the three.
    assert len(compared) == 1 and compared[0].requests == 3 and compared[0].comparison.rows == 3


async def test_no_copy_while_the_active_versions_queue_is_half_full(pair, reports):
    info, models = pair
    runner = ShadowRunner(max_pending=10, timeout_s=5)
    models[1].hold()
    running = info.versions[1].batcher.submit(rows_for(0), timeout_s=5)
    await wait_until_started(models[1])
    waiting = [info.versions[1].batcher.submit(rows_for(n), timeout_s=5) for n in (1, 2)]  # 2 of 4 places
    answered = asyncio.get_running_loop().create_future()
    answered.set_result(BatchResult(np.array([9.0]), batch_size=1, queue_ms=0.1, inference_ms=0.1))
    runner.follow(info, info.versions[1], rows_for(9), answered, KEY)
    await settle(reports, 1)
    assert (reports[0].status, reports[0].reason) == (ShadowStatus.DROPPED, DropReason.PRIMARY_BUSY.value)
    assert models[2].calls == 0
    models[1].release()
    await answers(running, *waiting)


async def test_a_failing_shadow_is_reported_failed_and_a_failed_answer_is_not_copied(pair, reports):
    info, models = pair
    runner = ShadowRunner(max_pending=10, timeout_s=5)

    def broken(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("the shadow is broken")

    executor = ThreadPoolExecutor(max_workers=1)
    working = info.versions[2].batcher
    info.versions[2].batcher = DynamicBatcher(broken, executor=executor, max_batch_size=4, max_delay_ms=0,
                                              queue_capacity=4, name="m v2")
    future = info.versions[1].batcher.submit(rows_for(5), timeout_s=5)
    runner.follow(info, info.versions[1], rows_for(5), future, KEY)
    assert (await answers(future))[0].outputs.tolist() == [1005.0]
    await settle(reports, 1)
    assert reports[0].status == ShadowStatus.FAILED and "failed on this batch" in reports[0].reason
    # An answer that failed has nothing to compare: no copy, no report.
    models[1].compute = lambda batch: (_ for _ in ()).throw(RuntimeError("primary down"))
    failing = info.versions[1].batcher.submit(rows_for(6), timeout_s=5)
    runner.follow(info, info.versions[1], rows_for(6), failing, KEY)
    await answers(failing, return_exceptions=True)
    await asyncio.sleep(0.1)
    assert len(reports) == 1
    await info.versions[2].batcher.close()
    info.versions[2].batcher = working
    executor.shutdown()


async def test_a_request_outside_the_sample_is_not_copied(pair, reports):
    info, _ = pair
    info.rollout = Rollout(shadow_version=2, shadow_sample_pct=0.0)
    runner = ShadowRunner(max_pending=10, timeout_s=5)
    future = info.versions[1].batcher.submit(rows_for(1), timeout_s=5)
    runner.follow(info, info.versions[1], rows_for(1), future, KEY)
    await answers(future)
    await asyncio.sleep(0.1)
    assert not reports


async def test_answers_are_compared_together_per_version_pair(pair, reports):
    info, models = pair
    runner = ShadowRunner(max_pending=100, timeout_s=5)
    for n in range(10):  # one at a time: the active version's queue holds 4
        future = info.versions[1].batcher.submit(rows_for(n), timeout_s=5)
        runner.follow(info, info.versions[1], rows_for(n), future, KEY)
        await answers(future)
    for _ in range(100):
        if sum(r.requests for r in reports) == 10:
            break
        await asyncio.sleep(0.05)
    # Within COMPARE_DELAY_S of each other: together (a slow machine may split them once).
    assert sum(r.requests for r in reports) == 10 and len(reports) <= 2
    assert sum(r.comparison.agreed for r in reports) == 10
    report = reports[0]
    assert report.primary_ms >= report.primary_ms_max > 0 and report.shadow_ms >= report.shadow_ms_max > 0
