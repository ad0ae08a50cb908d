"""Fixtures of the live-statistics tests, shared with the dashboard's: served models, an aggregator, events."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from inference.served import ServedModel
from inference.service import InferenceService, get_service
from monitoring import events
from monitoring import livestats as stats
from monitoring.events import PredictionEvent
from tests.support.fakes import fake_entry, serve_fake_models

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture
def served_models(monkeypatch: pytest.MonkeyPatch) -> InferenceService:
    """The process's inference service, replaced by one serving iris v1 and v2 (active) and wine v1."""
    return serve_fake_models(
        monkeypatch,
        ServedModel("iris", "classification", IRIS_FEATURES, "label", 2,
                  {1: fake_entry("iris", 1, IRIS_FEATURES), 2: fake_entry("iris", 2, IRIS_FEATURES)}),
        ServedModel("wine", "regression", ["a", "b"], "value", 1, {1: fake_entry("wine", 1, ["a", "b"])}),
    )


@pytest.fixture
async def aggregator(
    monkeypatch: pytest.MonkeyPatch, served_models: InferenceService
) -> AsyncIterator[stats.StatsAggregator]:
    """A fresh aggregator as this process's, and the only sink on monitoring.events."""
    # Imported here: this module loads as a plugin before Django's apps, and the
    # composition root imports models.
    from platform_core.wiring import serving_state

    fresh = stats.StatsAggregator(serving_state=serving_state)
    monkeypatch.setattr(stats, "aggregator", fresh)
    monkeypatch.setattr(events, "_prediction_sinks", [fresh.observe_prediction])
    monkeypatch.setattr(events, "_connection_sinks", [fresh.observe_connection])
    monkeypatch.setattr(events, "_in_flight_sinks", [fresh.observe_in_flight])
    monkeypatch.setattr(events, "_batch_sinks", [fresh.observe_batch])
    yield fresh
    await fresh.stop()


def prediction(model: str | None = "iris", outcome: str = "ok", *, rows: int = 1, total_ms: float = 2.0,
               **fields) -> PredictionEvent:
    """A PredictionEvent as the prediction consumer reports it."""
    ok = outcome == "ok"
    values = {
        "received_at": time.time(),
        "model": model,
        "version": 2 if model == "iris" else 1,
        "api_key": "client",
        "request_id": "r-1",
        "rows": rows,
        "inputs": [IRIS_ROW] * rows,
        "outputs": [{"label": "setosa", "probabilities": {"setosa": 0.97, "versicolor": 0.03}}] * rows if ok else None,
        "outcome": outcome,
        "queue_ms": 0.5 if ok else None,
        "inference_ms": 1.0 if ok else None,
        "total_ms": total_ms,
        "batch_size": rows if ok else None,
        "error": None if ok else "row 0: expected 4 features, got 3",
    }
    values.update(fields)
    values.setdefault("labels", get_service().labels(values["model"], values["version"]))
    return PredictionEvent(**values)
