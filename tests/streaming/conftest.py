"""Consumers under test talk to a real inference pool serving the real demo models."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from django.core import serializers
from django.core.management import call_command

import inference.service as service_module
from inference.schema import InputSchema
from inference.served import ServedModel, ServedVersion
from inference.service import InferenceService
from streaming.models import APIKey


@pytest.fixture(scope="session")
def demo_snapshot(django_db_setup, django_db_blocker):
    """Train and register the demo models once; return the registry rows and a loaded pool."""
    from inference.models import MLModel, ModelVersion

    with django_db_blocker.unblock():
        call_command("load_demo_models", verbosity=0)
        rows = serializers.serialize("json", [*MLModel.objects.all(), *ModelVersion.objects.all()])
        service = InferenceService()
        service.load_all()
        MLModel.objects.all().delete()
    yield rows, service
    service.shutdown()


class ControlledRuntime:
    """A real runtime whose calls can be held, or made to fail, by the test."""

    device = "test"
    task = "regression"
    classes = None
    # Its calls block on a threading.Event: they must run in the model's thread, never on the event loop.
    holds_gil = False
    engine = "test"

    def __init__(self, n_features: int = 2) -> None:
        self.n_features = n_features
        self.release = threading.Event()
        self.release.set()
        self.fail = False
        self.calls: list[int] = []

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.release.wait(10)
        self.calls.append(batch.shape[0])
        if self.fail:
            raise RuntimeError("boom: secret internals")
        return batch.sum(axis=1)

    def warmup(self) -> None:
        pass


@pytest.fixture(autouse=True)
def no_drain_left_behind():
    """A test that drains (``drain_connections``) leaves the process draining; the next one starts anew."""
    yield
    from streaming.draining import Drain

    Drain.started = False


@pytest.fixture
def service(demo_snapshot, transactional_db, monkeypatch):
    """The loaded demo pool as the process-wide service, with the registry rows in the test database."""
    rows, loaded = demo_snapshot
    for obj in serializers.deserialize("json", rows):
        obj.save()
    monkeypatch.setattr(service_module, "_service", loaded)
    yield loaded
    for name in [n for n in loaded.model_names() if n.startswith("test-")]:
        loaded._models.pop(name)


@pytest.fixture
def controlled(service):
    """A `test-controlled` model (2 features) whose runtime the test holds or breaks."""
    runtime = ControlledRuntime()
    info = ServedModel("test-controlled", "regression", ["a", "b"], "value: a + b", active_version=1)
    entry = ServedVersion("test-controlled", 1, "regression", InputSchema(["a", "b"]), "value: a + b")
    service.attach(entry, runtime, max_batch_size=8, max_delay_ms=0, queue_capacity=4)
    info.versions[1] = entry
    broken = ServedVersion("test-controlled", 2, "regression", InputSchema(["a", "b"]), "value: a + b",
                        error="Could not load the artifact.")
    info.versions[2] = broken
    service.add_model(info)
    yield runtime
    runtime.release.set()


@pytest.fixture
def api_key(transactional_db):
    """Return a factory: api_key(name, models=(), rate=None) -> the raw key."""

    def create(name, models, rate, fields):
        from inference.models import MLModel

        key = APIKey(name=name, rate_limit_per_s=rate, **fields)
        raw = key.set_new_key()
        key.save()
        key.allowed_models.set(MLModel.objects.filter(name__in=models))
        return raw

    def make(name="client", models=(), rate=None, **fields):
        # Called from async tests: the ORM must run outside the event loop's thread.
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(create, name, models, rate, fields).result()

    return make
