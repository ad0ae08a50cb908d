"""Model calls on the event loop: when a batcher runs a short call inline instead of in the model's thread."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from inference.batching import DynamicBatcher
from inference.inline_calls import MIN_SAMPLES, PROBE_EVERY, PROBE_LIMIT, WINDOW, InlinePolicy

from .conftest import rows_for

# -- the policy --------------------------------------------------------------------


def test_a_policy_with_no_limit_never_runs_a_call_inline():
    policy = InlinePolicy(0.0)
    for _ in range(100):
        assert policy.next_inline() is False
        policy.ran(False, 1e-6)


def test_calls_run_in_the_thread_until_there_are_timings_then_probe_then_stay_inline_while_short():
    policy = InlinePolicy(0.001)
    decisions = []
    for _ in range(MIN_SAMPLES):  # no evidence yet: the thread
        decisions.append(policy.next_inline())
        policy.ran(decisions[-1], 0.0004)
    assert decisions == [False] * MIN_SAMPLES
    for _ in range(MIN_SAMPLES):  # the thread says it may be short: probes, one after the other
        assert policy.next_inline() is True
        policy.ran(True, 0.0002)
    assert policy.inlining
    assert all(policy.next_inline() for _ in range(50))


def inlining_policy() -> InlinePolicy:
    """A policy with a 1 ms limit that has run a model's short calls inline for a whole window."""
    policy = InlinePolicy(0.001)
    for _ in range(MIN_SAMPLES):
        policy.ran(False, 0.0004)
    for _ in range(WINDOW):
        policy.ran(True, 0.0002)
    return policy


def test_a_call_that_grew_slow_goes_back_to_the_thread_and_is_probed_only_now_and_then():
    policy = inlining_policy()
    assert policy.inlining
    for _ in range(WINDOW // 2 + 1):  # larger batches: the inline median passes the limit
        policy.ran(True, 0.003)
    assert not policy.inlining

    decisions = []
    for _ in range(3 * (PROBE_EVERY + 1)):
        decisions.append(policy.next_inline())
        policy.ran(decisions[-1], 0.003 if decisions[-1] else 0.004)
    assert sum(decisions) == 3  # one probe in every PROBE_EVERY + 1 calls
    assert not policy.inlining


def test_a_model_far_slower_than_the_limit_is_never_probed():
    policy = InlinePolicy(0.001)
    for _ in range(WINDOW):
        policy.ran(False, PROBE_LIMIT * 0.001 * 1.5)
    assert not any(policy.next_inline() for _ in range(10 * PROBE_EVERY))


def test_a_preempted_call_does_not_send_a_short_model_back_to_the_thread():
    policy = inlining_policy()
    for _ in range(3):  # the scheduler ran something else in the middle of three calls
        policy.ran(True, 0.02)
    assert policy.inlining


# -- the batcher ---------------------------------------------------------------------


class ThreadRecordingModel:
    """Answers each row's sum, and notes the thread of each call."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.threads: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.threads.append(threading.get_ident())
        if self.delay_s:
            time.sleep(self.delay_s)
        return batch.sum(axis=1)


@pytest.fixture
def executor():
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-model")
    yield pool
    pool.shutdown(wait=True)


async def serve_one_at_a_time(batcher: DynamicBatcher, n: int) -> list[float]:
    outputs = []
    for i in range(n):
        result = await batcher.submit(rows_for(i), timeout_s=10)
        outputs.append(float(result.outputs[0]))
    return outputs


async def test_a_short_model_call_moves_onto_the_event_loop_and_answers_the_same(executor):
    model = ThreadRecordingModel()
    batcher = DynamicBatcher(model, executor=executor, max_batch_size=8, max_delay_ms=0, queue_capacity=64,
                             inline_below_ms=50)
    outputs = await serve_one_at_a_time(batcher, 40)
    await batcher.close()

    loop_thread = threading.get_ident()
    assert outputs == [float(rows_for(i).sum()) for i in range(40)]
    assert loop_thread not in model.threads[:MIN_SAMPLES]  # the thread first, for evidence
    assert model.threads[-10:] == [loop_thread] * 10


async def test_a_slow_model_call_stays_in_the_thread(executor):
    model = ThreadRecordingModel(delay_s=0.02)
    batcher = DynamicBatcher(model, executor=executor, max_batch_size=8, max_delay_ms=0, queue_capacity=64,
                             inline_below_ms=1)
    await serve_one_at_a_time(batcher, 12)
    await batcher.close()
    assert threading.get_ident() not in model.threads


async def test_without_a_limit_every_call_runs_in_the_thread(executor):
    model = ThreadRecordingModel()
    batcher = DynamicBatcher(model, executor=executor, max_batch_size=8, max_delay_ms=0, queue_capacity=64)
    await serve_one_at_a_time(batcher, 30)
    await batcher.close()
    assert threading.get_ident() not in model.threads


async def test_the_event_loop_gets_a_turn_between_inline_batches(executor):
    model = ThreadRecordingModel()
    batcher = DynamicBatcher(model, executor=executor, max_batch_size=4, max_delay_ms=0, queue_capacity=256,
                             inline_below_ms=50)
    await serve_one_at_a_time(batcher, 2 * MIN_SAMPLES + 2)  # inline from here on
    calls_before = len(model.threads)
    ticks: list[int] = []

    async def ticker() -> None:
        while True:
            ticks.append(len(model.threads))
            await asyncio.sleep(0)

    ticking = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    futures = [batcher.submit(rows_for(i), timeout_s=10) for i in range(40)]  # ten full batches at once
    await asyncio.gather(*futures)
    ticking.cancel()
    await batcher.close()

    assert len(model.threads) - calls_before == 10
    assert model.threads[-10:] == [threading.get_ident()] * 10
    # The ticker ran between the batches: it saw the call count at (nearly) every step.
    seen = {count - calls_before for count in ticks}
    assert len(seen & set(range(1, 10))) >= 8


def test_the_limit_must_be_a_finite_non_negative_number(executor):
    for bad in (-1, float("nan"), float("inf"), "1"):
        with pytest.raises(ValueError, match="inline_below_ms"):
            DynamicBatcher(np.asarray, executor=executor, max_batch_size=1, max_delay_ms=0, queue_capacity=1,
                           inline_below_ms=bad)


class _Runtime:
    device = "cpu"
    task = "regression"
    n_features = 3
    classes = None
    engine = "test"

    def __init__(self, holds_gil: bool) -> None:
        self.holds_gil = holds_gil

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return batch.sum(axis=1)


@pytest.mark.parametrize(("holds_gil", "limit_s"), [(True, 0.001), (False, 0.0)])
def test_only_a_runtime_that_holds_the_gil_may_run_inline(executor, holds_gil, limit_s):
    from inference.loading import attach, new_entry
    from inference.registry import Batching

    entry = new_entry("m", 1, "regression", ["a", "b", "c"], "value")
    attach(entry, _Runtime(holds_gil), executor=executor, on_batch=None,
           batching=Batching(max_batch_size=8, max_delay_ms=0, queue_capacity=8, inline_below_ms=1.0))
    assert entry.batcher.inline_calls.below_s == limit_s


def test_the_demo_runtimes_say_whether_they_hold_the_gil():
    from inference.runtimes.keras import KerasRuntime
    from inference.runtimes.sklearn import SklearnRuntime

    assert SklearnRuntime.holds_gil is True
    assert KerasRuntime.holds_gil is False


async def test_the_batch_observer_is_told_which_calls_ran_inline(executor):
    model = ThreadRecordingModel()
    seen = []
    batcher = DynamicBatcher(model, executor=executor, max_batch_size=8, max_delay_ms=0, queue_capacity=64,
                             inline_below_ms=50, on_batch=seen.append)
    await serve_one_at_a_time(batcher, 20)
    await batcher.close()
    loop_thread = threading.get_ident()
    assert [stats.inline for stats in seen] == [thread == loop_thread for thread in model.threads]
    assert seen[-1].inline and not seen[0].inline
