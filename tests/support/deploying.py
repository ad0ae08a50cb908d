"""Fixtures of the tests that change the registry while a pool follows it: an empty pool, and versions to deploy."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
import skops.io
from channels.db import database_sync_to_async
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

if TYPE_CHECKING:
    from inference.models import ModelVersion

# Loaded as a pytest plugin (tests/conftest.py), before Django's apps are: the
# registry's modules are imported inside the fixtures.

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture
def pool(model_store, monkeypatch):
    """An empty pool as the process-wide one; it follows the registry when the test reconciles it."""
    import inference.service as service_module
    from inference.service import InferenceService

    pool = InferenceService()
    monkeypatch.setattr(service_module, "_service", pool)
    yield pool
    pool.shutdown()


@pytest.fixture
def deploy(tmp_path):
    """``await deploy(name, c)``: a logistic regression on iris registered as the next version of ``name``.

    Active unless ``activate=False``; ``c`` (the regularisation) makes versions answer differently.
    """
    from inference import deployment

    iris = load_iris()
    labels = np.asarray(iris.target_names)[iris.target]

    @database_sync_to_async
    def register(name: str, c: float, *, activate: bool = True) -> ModelVersion:
        path = tmp_path / f"{name}-{c}.skops"
        skops.io.dump(LogisticRegression(C=c, max_iter=2000).fit(iris.data, labels), path)
        schema = deployment.ModelSchema(task="classification", inputs=FEATURES, outputs="label and probabilities")
        return deployment.register(name, path, "sklearn", actor="test", source="command", activate=activate,
                                   schema=schema)

    return register
