"""Fixtures of the dynamic-batcher tests: a fake model call in a real executor thread, and batchers around it."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from inference.batching import DynamicBatcher

N_FEATURES = 3


class FakeModel:
    """A model call that records every batch it is given and answers each row's sum.

    ``delay_s`` makes each call take at least that long; ``hold()`` makes the
    next calls block until ``release()``, so requests pile up behind them.
    """

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.batches: list[np.ndarray] = []
        self.started = threading.Event()
        self._gate = threading.Event()
        self._gate.set()
        self._lock = threading.Lock()

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.batches)

    @property
    def sizes(self) -> list[int]:
        with self._lock:
            return [batch.shape[0] for batch in self.batches]

    def seen(self, value: float) -> bool:
        """Whether any row the model was given starts with ``value``."""
        with self._lock:
            return any((batch[:, 0] == value).any() for batch in self.batches)

    def batch_holding(self, value: float) -> np.ndarray:
        with self._lock:
            matches = [batch for batch in self.batches if (batch[:, 0] == value).any()]
        if len(matches) != 1:
            raise LookupError(f"{len(matches)} batches hold a row starting with {value}.")
        return matches[0]

    def compute(self, batch: np.ndarray) -> np.ndarray:
        return batch.sum(axis=1)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            self.batches.append(batch.copy())
        self.started.set()
        if not self._gate.wait(timeout=10):
            raise RuntimeError("The test never released the fake model.")
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.compute(batch)


def rows_for(request_id: int, n: int = 1) -> np.ndarray:
    """Rows whose first column names the request, so every output can be traced back."""
    rows = np.empty((n, N_FEATURES))
    rows[:, 0] = request_id
    rows[:, 1] = np.arange(n) * 0.25
    rows[:, 2] = 1000.0
    return rows


async def wait_until_started(model: FakeModel) -> None:
    """Wait, without blocking the event loop, until the model is inside a call."""
    if not await asyncio.to_thread(model.started.wait, 5):
        raise AssertionError("The batcher never called the model.")


async def answers(*futures, return_exceptions: bool = False) -> list:
    """Every future's outcome; a future never answered fails the test instead of hanging it."""
    return await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=return_exceptions), 5)


@pytest.fixture
def executor():
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-inference")
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def model():
    fake = FakeModel()
    yield fake
    fake.release()


@pytest.fixture
async def make_batcher(executor, model):
    batchers: list[DynamicBatcher] = []

    def make(call=None, **options) -> DynamicBatcher:
        options.setdefault("max_batch_size", 16)
        options.setdefault("max_delay_ms", 0)
        options.setdefault("queue_capacity", 1000)
        options.setdefault("name", "fake v1")
        batcher = DynamicBatcher(call or model, executor=executor, **options)
        batchers.append(batcher)
        return batcher

    yield make
    model.release()
    for batcher in batchers:
        await asyncio.wait_for(batcher.close(), 5)
