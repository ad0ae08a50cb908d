"""The pool follows the registry: ``InferenceService.reconcile`` on real iris versions in a real registry.

Each test registers retrained iris classifiers (logistic regressions with
different ``C``, so that their outputs differ) through the ORM and lets the
pool converge, as a server process does when it hears of a change.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from channels.db import database_sync_to_async
from django.db import connection
from django.test.utils import CaptureQueriesContext
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

import inference.service as service_module
from inference import swaps
from inference.artifacts import artifact_path, register_version, save_sklearn
from inference.exceptions import ModelUnavailable, UnknownModel
from inference.models import MLModel, ModelVersion
from inference.registry import read_registry
from inference.service import InferenceService
from inference.swaps import SwapStep

pytestmark = pytest.mark.django_db(transaction=True)

IRIS = load_iris()
ROW = np.array([[6.0, 2.9, 4.5, 1.5]])


def train(c: float) -> LogisticRegression:
    labels = np.asarray(IRIS.target_names)[IRIS.target]
    return LogisticRegression(C=c, max_iter=2000).fit(IRIS.data, labels)


class Registry:
    """Changes to the registry, as the deployment commands make them (the ORM runs off the event loop)."""

    def __init__(self) -> None:
        self.estimators: dict[int, LogisticRegression] = {}

    @database_sync_to_async
    def add_version(self, c: float, *, activate: bool = True) -> int:
        mlmodel, _ = MLModel.objects.get_or_create(
            name="iris", defaults={"task": "classification", "inputs": [f"f{i}" for i in range(4)],
                                   "outputs": "label and probabilities"},
        )
        number = (ModelVersion.objects.filter(model=mlmodel).count()) + 1
        estimator = train(c)
        relative = f"iris/v{number}.skops"
        checksum = save_sklearn(estimator, relative)
        version = register_version(mlmodel, framework="sklearn", artifact=relative, checksum=checksum,
                                   metadata={"classes": [str(c) for c in estimator.classes_]}, activate=activate)
        self.estimators[version.version] = estimator
        return version.version

    @database_sync_to_async
    def activate(self, number: int) -> None:
        ModelVersion.objects.get(model__name="iris", version=number).activate()

    @database_sync_to_async
    def set_status(self, number: int, status: str) -> None:
        ModelVersion.objects.filter(model__name="iris", version=number).update(status=status, is_active=False)

    def expected(self, number: int) -> np.ndarray:
        return self.estimators[number].predict_proba(ROW)


@pytest.fixture
def registry(model_store) -> Registry:
    return Registry()


@pytest.fixture
def service():
    pool = InferenceService()
    yield pool
    pool.shutdown()


@pytest.fixture
def facts():
    seen: list[swaps.SwapFact] = []
    swaps.observe_swaps(seen.append)
    yield seen
    swaps.stop_observing(seen.append)


async def predict(service: InferenceService, version: int | None = None) -> tuple[int, np.ndarray]:
    entry = service.entry("iris", version)
    result = await asyncio.wait_for(service.submit(entry, ROW, received_at=time.perf_counter()), 10)
    return entry.version, result.outputs


async def until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("The condition never held.")
        await asyncio.sleep(0.01)


async def test_a_new_model_appears_with_its_active_version(service, registry):
    await registry.add_version(1.0)
    changes = await service.reconcile()
    assert [(c.model, c.before, c.after["version"]) for c in changes] == [("iris", None, 1)]
    version, outputs = await predict(service)
    assert version == 1
    np.testing.assert_allclose(outputs, registry.expected(1), rtol=1e-5)
    assert service.catalog()["iris"]["version"] == 1


async def test_a_new_version_is_loaded_in_a_thread_and_warm_before_it_takes_traffic(
        service, registry, facts, monkeypatch):
    await registry.add_version(1.0)
    await service.reconcile()
    loading = threading.Event()
    release = threading.Event()
    loaded_in: list[threading.Thread] = []
    calls_of_new: list[int] = []
    real_load = service_module.load_version

    def slow_load(*args):
        loaded_in.append(threading.current_thread())
        loading.set()
        release.wait(10)
        entry = real_load(*args)
        call = entry.batcher.call
        entry.batcher.call = lambda batch: (calls_of_new.append(len(batch)), call(batch))[1]
        return entry

    monkeypatch.setattr(service_module, "load_version", slow_load)
    await registry.add_version(0.01)
    reconciling = asyncio.create_task(service.reconcile())
    await asyncio.to_thread(loading.wait, 5)
    # While v2 loads, v1 serves.
    assert (await predict(service))[0] == 1
    calls_at_swap: list[int] = []
    swaps.observe_swaps(on_activated := lambda fact: fact.step == SwapStep.ACTIVATED
                        and calls_at_swap.append(len(calls_of_new)))
    try:
        release.set()
        changes = await asyncio.wait_for(reconciling, 10)
    finally:
        swaps.stop_observing(on_activated)
    assert loaded_in[0] is not threading.current_thread()
    # The warm-up request went through the new batcher before the swap.
    assert calls_at_swap and calls_at_swap[0] >= 1
    assert [f.step for f in facts if f.version == 2][:2] == [SwapStep.LOADED, SwapStep.ACTIVATED]
    assert next(f.seconds for f in facts if f.step == SwapStep.LOADED) > 0
    assert [(c.before["version"], c.after["version"]) for c in changes] == [(1, 2)]
    version, outputs = await predict(service)
    assert version == 2
    np.testing.assert_allclose(outputs, registry.expected(2), rtol=1e-5)


async def test_requests_queued_on_the_old_version_finish_on_it(service, registry):
    await registry.add_version(1.0)
    await service.reconcile()
    old = service.entry("iris")
    held = threading.Event()
    call = old.batcher.call
    old.batcher.call = lambda batch: (held.wait(10), call(batch))[1]
    # The held version gets a thread of its own, so the new version's warm-up is not stuck behind it.
    own = ThreadPoolExecutor(max_workers=1)
    old.batcher.executor = own
    try:
        queued = [service.submit(old, ROW, received_at=time.perf_counter()) for _ in range(5)]
        await registry.add_version(0.01)
        await asyncio.wait_for(service.reconcile(), 10)
        assert (await predict(service))[0] == 2
        assert not any(future.done() for future in queued)
        held.set()
        results = await asyncio.wait_for(asyncio.gather(*queued), 10)
    finally:
        held.set()
        own.shutdown(wait=True)
    for result in results:
        np.testing.assert_allclose(result.outputs, registry.expected(1), rtol=1e-5)
        assert not np.allclose(result.outputs, registry.expected(2), rtol=1e-3)


async def test_the_replaced_version_stays_loaded_as_standby_and_a_pinned_request_keeps_it(service, registry):
    await registry.add_version(1.0)
    await service.reconcile()
    await registry.add_version(0.01)
    await service.reconcile()
    assert service.snapshot()[0].active_version == 2
    version, outputs = await predict(service, version=1)
    assert version == 1
    np.testing.assert_allclose(outputs, registry.expected(1), rtol=1e-5)
    # A rollback is an instant swap to the standby: nothing is loaded.
    first = service.entry("iris", 1)
    await registry.activate(1)
    await service.reconcile()
    assert service.entry("iris") is first
    assert (await predict(service, version=2))[0] == 2


async def test_at_most_one_previous_version_stays_loaded_the_others_are_closed(service, registry, facts):
    await registry.add_version(1.0)
    await service.reconcile()
    first = service.entry("iris")
    batcher = first.batcher
    await registry.add_version(0.01)
    await service.reconcile()
    await registry.add_version(100.0)
    await service.reconcile()
    loaded = {state.version for state in service.snapshot()[0].versions if state.loaded}
    assert loaded == {2, 3}
    assert any(f.step == SwapStep.DROPPED and f.version == 1 for f in facts)
    # Its batcher answered what it held and closed; nothing refers to its model any more.
    await until(lambda: first.batcher is None)
    assert batcher.queue_depth == 0
    with pytest.raises(ModelUnavailable, match="not loaded"):
        service.entry("iris", 1)
    assert service.health()["failed"] == {}


async def test_a_retired_version_answers_unknown_model(service, registry):
    await registry.add_version(1.0)
    await service.reconcile()
    await registry.add_version(0.01)
    await service.reconcile()
    await registry.set_status(1, ModelVersion.Status.RETIRED)
    await service.reconcile()
    with pytest.raises(UnknownModel):
        service.entry("iris", 1)
    assert service.entry("iris").version == 2


async def test_a_version_that_fails_to_load_leaves_the_old_one_serving(service, registry, facts, monkeypatch):
    await registry.add_version(1.0)
    await service.reconcile()
    await registry.add_version(0.01, activate=False)
    # The file changed after registration: the checksum no longer matches.
    artifact_path("iris/v2.skops").write_bytes(b"not the registered model")
    await registry.activate(2)
    changes = await service.reconcile()
    assert changes == []
    assert (await predict(service))[0] == 1
    failure = next(f for f in facts if f.step == SwapStep.LOAD_FAILED)
    assert (failure.model, failure.version) == ("iris", 2) and "checksum" in failure.error
    with pytest.raises(ModelUnavailable, match="failed to load"):
        service.entry("iris", 2)
    assert "checksum" in service.health()["failed"]["iris:2"]
    # Not tried again at every reconcile.
    attempts: list[object] = []
    monkeypatch.setattr(service_module, "load_version", lambda *args: attempts.append(args))
    await service.reconcile()
    await service.reconcile()
    assert attempts == []


async def test_nothing_changed_costs_one_query_and_no_load(service, registry, monkeypatch):
    await registry.add_version(1.0)
    await service.reconcile()
    queries: list[int] = []

    def counted_read():
        with CaptureQueriesContext(connection) as captured:
            view = read_registry()
        queries.append(len(captured))
        return view

    monkeypatch.setattr(service_module, "read_registry", counted_read)
    monkeypatch.setattr(service_module, "load_version", lambda *args: pytest.fail("nothing should load"))
    assert await service.reconcile() == []
    assert queries == [1]


async def test_concurrent_reconciles_load_a_new_version_once(service, registry, monkeypatch):
    await registry.add_version(1.0)
    await service.reconcile()
    loads: list[tuple] = []
    real_load = service_module.load_version

    def counted_load(*args):
        loads.append(args)
        return real_load(*args)

    monkeypatch.setattr(service_module, "load_version", counted_load)
    await registry.add_version(0.01)
    results = await asyncio.wait_for(asyncio.gather(*(service.reconcile() for _ in range(4))), 20)
    assert len(loads) == 1
    assert sum(len(changes) for changes in results) == 1
    assert service.entry("iris").version == 2


async def test_a_model_deleted_from_the_registry_is_no_longer_served(service, registry):
    await registry.add_version(1.0)
    await service.reconcile()
    entry = service.entry("iris")
    await database_sync_to_async(MLModel.objects.filter(name="iris").delete)()
    changes = await service.reconcile()
    assert [(c.model, c.after) for c in changes] == [("iris", None)]
    with pytest.raises(UnknownModel):
        service.entry("iris")
    await until(lambda: entry.batcher is None)
