"""Driving the prediction consumer through channels' WebsocketCommunicator."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

import numpy as np
import pytest
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


def dataset_rows(name, count):
    """``count`` rows spread over the data set the demo model ``name`` learned from (shipped with scikit-learn)."""
    from sklearn import datasets

    loaders = {"iris": datasets.load_iris, "breast-cancer": datasets.load_breast_cancer,
               "diabetes": datasets.load_diabetes, "digits": datasets.load_digits}
    data = loaders[name]().data
    return data[np.linspace(0, len(data) - 1, count).astype(int)].tolist()


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


def framework_predictions(path, framework, classes, rows):
    """What the model's own framework predicts for ``rows``, from its artifact at ``path``.

    Returns ``(outputs, labels, classes)``: a classifier's probabilities (one
    column per class of ``classes``) and labels, a regressor's values with no
    labels. scikit-learn estimators are loaded from their skops file, Keras
    models with ``keras.saving.load_model`` in safe mode: none of the
    platform's runtimes or reply building takes part.
    """
    x = np.asarray(rows, dtype=np.float64)
    if framework == "keras":
        import keras

        model = keras.saving.load_model(path, compile=False, safe_mode=True)
        probabilities = np.asarray(model(x.astype(np.float32)))
        return probabilities, [classes[i] for i in probabilities.argmax(axis=1)], classes
    from inference.artifacts import load_sklearn_estimator

    estimator = load_sklearn_estimator(path)
    if hasattr(estimator, "predict_proba"):
        labels = [str(label) for label in estimator.predict(x)]
        return estimator.predict_proba(x), labels, [str(c) for c in estimator.classes_]
    return estimator.predict(x), None, None


def assert_outputs_match(outputs, expected):
    """A reply's output rows against ``framework_predictions``: labels exactly, numbers to float32 precision."""
    values, labels, classes = expected
    assert len(outputs) == len(values), (outputs, values)
    if labels is None:
        got = [row["value"] for row in outputs]
        assert got == pytest.approx(values.tolist(), rel=1e-6), (got, values)
        return
    got = [row["label"] for row in outputs]
    assert got == labels, (got, labels)
    for row, probabilities in zip(outputs, values.tolist(), strict=True):
        assert set(row["probabilities"]) == set(classes), (row, classes)
        got = [row["probabilities"][c] for c in classes]
        assert got == pytest.approx(probabilities, rel=1e-5, abs=1e-6), (got, probabilities)
