"""Fixtures of the prediction-log tests: logs writing to the test database, events, a locked database."""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import OperationalError, connection
from prometheus_client import REGISTRY

from monitoring.events import PredictionEvent
from monitoring.predictionlog import PredictionLog

IRIS_OUTPUT = {"label": "setosa", "probabilities": {"setosa": 0.97, "versicolor": 0.02, "virginica": 0.01}}

_request_numbers = itertools.count(1)


@pytest.fixture
def make_event() -> Callable[..., PredictionEvent]:
    """``make_event(**fields)``: a served iris request with a fresh request id, ``fields`` on top."""

    def make(**fields: Any) -> PredictionEvent:
        number = next(_request_numbers)
        values: dict[str, Any] = {
            "received_at": time.time(),
            "model": "iris",
            "version": 1,
            "api_key": "client",
            "request_id": f"req-{number}",
            "rows": 2,
            "inputs": [[5.1, 3.5, 1.4, 0.2], {"sepal_length": 6.2, "sepal_width": 2.9,
                                              "petal_length": 4.3, "petal_width": 1.3}],
            "outputs": [IRIS_OUTPUT, {"label": "versicolor", "probabilities": {"setosa": 0.01}}],
            "outcome": "ok",
            "queue_ms": 1.25,
            "inference_ms": 0.5,
            "total_ms": 2.125,
            "batch_size": 8,
        }
        values.update(fields)
        return PredictionEvent(**values)

    return make


@pytest.fixture
def make_log(transactional_db, tmp_path: Path) -> Iterator[Callable[..., PredictionLog]]:
    """``make_log(**options)``: a ``PredictionLog`` on the test database, stopped after the test.

    Small batches, a short interval and a short database timeout by default,
    spilling under the test's own directory.
    """
    logs: list[PredictionLog] = []

    def make(**options: Any) -> PredictionLog:
        values: dict[str, Any] = {
            "buffer_records": 10_000,
            "batch_size": 50,
            "flush_interval_ms": 50,
            "db_timeout_s": 0.2,
            "spill_dir": tmp_path / "spill",
        }
        values.update(options)
        log = PredictionLog(**values)
        logs.append(log)
        return log

    yield make
    for log in logs:
        log.stop(timeout_s=5)


@contextlib.contextmanager
def sqlite_held_exclusively(name: str, *, timeout_s: float = 30.0) -> Iterator[None]:
    """Another connection holds the SQLite database ``name`` (a path or a ``file:`` URI) under ``BEGIN EXCLUSIVE``."""
    holder = sqlite3.connect(name, uri=name.startswith("file:"), isolation_level=None, timeout=timeout_s,
                             check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@pytest.fixture
def lock_database(transactional_db) -> Callable[[], contextlib.AbstractContextManager[None]]:
    """``with lock_database():`` another connection holds the test database under ``BEGIN EXCLUSIVE``."""
    return lambda: sqlite_held_exclusively(connection.settings_dict["NAME"])


@pytest.fixture
def metric() -> Callable[[str], float]:
    """``metric(name)``: the current value of a sample of the default registry (0 when absent)."""

    def value(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    return value


def _holds(condition: Callable[[], bool]) -> bool:
    try:
        return condition()
    except OperationalError as exc:
        # The test database is an in-memory SQLite database in shared-cache
        # mode: a reader gets "table is locked" at once, no busy timeout,
        # while the log's writer thread has an insert open. Not yet, then.
        if "locked" in str(exc):
            return False
        raise


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not _holds(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out after {timeout_s} s waiting for {what}.")
        time.sleep(0.02)


@pytest.fixture
def eventually() -> Callable[..., None]:
    """``eventually(condition, timeout_s=10, what=...)``: poll until ``condition()`` is true, or fail."""
    return wait_for
