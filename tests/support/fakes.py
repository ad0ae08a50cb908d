"""An inference service serving fake models, for tests that need models but not their loading."""

from __future__ import annotations

import time

import pytest

import inference.service
from inference.batching import DynamicBatcher
from inference.schema import InputSchema
from inference.served import ServedModel, ServedVersion
from inference.service import InferenceService


def fake_entry(name: str, version: int, inputs: list[str]) -> ServedVersion:
    """A regression entry whose model answers each row's first feature, run on the event loop's executor."""
    entry = ServedVersion(name=name, version=version, task="regression", schema=InputSchema(inputs), outputs="value")
    entry.batcher = DynamicBatcher(
        lambda rows: rows[:, 0], executor=None, max_batch_size=8, max_delay_ms=0, queue_capacity=64,
        name=f"{name} v{version}",
    )
    return entry


def serve_fake_models(monkeypatch: pytest.MonkeyPatch, *models: ServedModel) -> InferenceService:
    """Replace the process's inference service with one serving ``models`` (nothing loaded)."""
    service = InferenceService()
    for info in models:
        service.add_model(info)
    service.loaded_at = time.time()
    monkeypatch.setattr(inference.service, "_service", service)
    return service
