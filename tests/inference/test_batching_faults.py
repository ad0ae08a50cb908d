"""The dynamic batcher under faults: failing models, overload, deadlines, abandoned requests, event loops."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from inference.batching import BatchStats, DynamicBatcher
from inference.exceptions import DeadlineExceeded, ModelCallFailed, Overloaded

from .conftest import FakeModel, answers, rows_for, wait_until_started

# -- error isolation ------------------------------------------------------------------


class FailsOnRequest(FakeModel):
    def __init__(self, bad_request: int) -> None:
        super().__init__()
        self.bad_request = bad_request

    def compute(self, batch: np.ndarray) -> np.ndarray:
        if (batch[:, 0] == self.bad_request).any():
            raise ValueError("the fake model cannot take this row")
        return batch.sum(axis=1)


async def test_a_failing_batch_fails_only_its_own_requests(make_batcher):
    model = FailsOnRequest(bad_request=0)
    observed: list[BatchStats] = []
    batcher = make_batcher(model, max_batch_size=2, on_batch=observed.append)
    futures = [batcher.submit(rows_for(i), timeout_s=10) for i in range(4)]
    outcomes = await answers(*futures, return_exceptions=True)

    assert model.sizes == [2, 2]
    for failed in outcomes[:2]:
        assert isinstance(failed, ModelCallFailed)
        assert failed.code == "internal"
        assert str(failed) == "The model fake v1 failed on this batch."
    for i, served in enumerate(outcomes[2:], start=2):
        np.testing.assert_array_equal(served.outputs, rows_for(i).sum(axis=1))
    assert [(s.rows, s.requests, s.failed) for s in observed] == [(2, 2, True), (2, 2, False)]


async def test_the_batcher_keeps_serving_after_a_failed_batch(make_batcher):
    model = FailsOnRequest(bad_request=7)
    batcher = make_batcher(model)
    with pytest.raises(ModelCallFailed):
        await answers(batcher.submit(rows_for(7), timeout_s=10))

    (result,) = await answers(batcher.submit(rows_for(8), timeout_s=10))
    np.testing.assert_array_equal(result.outputs, rows_for(8).sum(axis=1))


class DropsARow(FakeModel):
    def compute(self, batch: np.ndarray) -> np.ndarray:
        return batch.sum(axis=1)[:-1]


async def test_a_model_returning_the_wrong_number_of_rows_fails_the_batch(make_batcher):
    model = DropsARow()
    batcher = make_batcher(model)
    futures = [batcher.submit(rows_for(i, 2), timeout_s=10) for i in range(3)]
    outcomes = await answers(*futures, return_exceptions=True)

    assert model.sizes == [6]
    for failed in outcomes:
        assert isinstance(failed, ModelCallFailed)
        assert failed.code == "internal"
        assert str(failed) == "fake v1 returned 5 output rows for a batch of 6."


async def test_an_observer_that_raises_does_not_break_serving(make_batcher, model):
    def broken_observer(stats: BatchStats) -> None:
        raise RuntimeError("the metrics backend is down")

    batcher = make_batcher(on_batch=broken_observer)
    (first,) = await answers(batcher.submit(rows_for(1), timeout_s=10))
    (second,) = await answers(batcher.submit(rows_for(2), timeout_s=10))

    np.testing.assert_array_equal(first.outputs, rows_for(1).sum(axis=1))
    np.testing.assert_array_equal(second.outputs, rows_for(2).sum(axis=1))
    assert model.calls == 2


# -- overload -------------------------------------------------------------------------


async def test_a_full_queue_answers_overloaded_and_the_queued_requests_are_still_served(make_batcher, model):
    batcher = make_batcher(max_batch_size=16, queue_capacity=3)
    model.hold()
    running = batcher.submit(rows_for(0), timeout_s=10)
    await wait_until_started(model)
    queued = [batcher.submit(rows_for(i), timeout_s=10) for i in (1, 2, 3)]

    with pytest.raises(Overloaded) as excinfo:
        batcher.submit(rows_for(4), timeout_s=10)
    assert excinfo.value.code == "overloaded"
    assert excinfo.value.retry_after_ms >= 1
    assert str(excinfo.value) == "The queue for fake v1 is full (3 requests waiting)."

    model.release()
    results = await answers(running, *queued)
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result.outputs, rows_for(i).sum(axis=1))
    assert not model.seen(4)
    assert model.sizes == [1, 3]

    # Once drained, the queue takes requests again.
    (again,) = await answers(batcher.submit(rows_for(5), timeout_s=10))
    np.testing.assert_array_equal(again.outputs, rows_for(5).sum(axis=1))


# -- deadlines ------------------------------------------------------------------------


async def test_requests_past_their_deadline_are_answered_timeout_and_never_run(make_batcher, model):
    batcher = make_batcher(max_batch_size=16, max_delay_ms=5)
    model.hold()
    running = batcher.submit(rows_for(0), timeout_s=10)
    await wait_until_started(model)
    impatient = [batcher.submit(rows_for(i), timeout_s=0.01) for i in (1, 2)]
    patient = batcher.submit(rows_for(3), timeout_s=10)
    await asyncio.sleep(0.05)
    model.release()

    outcomes = await answers(*impatient, return_exceptions=True)
    for expired in outcomes:
        assert isinstance(expired, DeadlineExceeded)
        assert expired.code == "timeout"
        assert str(expired).startswith("The request waited ")
        assert str(expired).endswith(" ms for fake v1 and was not run.")
    served = await answers(running, patient)
    np.testing.assert_array_equal(served[1].outputs, rows_for(3).sum(axis=1))
    assert not model.seen(1)
    assert not model.seen(2)
    assert model.sizes == [1, 1]


# -- abandoned requests ---------------------------------------------------------------


async def test_a_cancelled_request_is_skipped_and_never_run(make_batcher, model):
    batcher = make_batcher(max_batch_size=16)
    model.hold()
    running = batcher.submit(rows_for(0), timeout_s=10)
    await wait_until_started(model)
    gone = batcher.submit(rows_for(1), timeout_s=10)
    staying = batcher.submit(rows_for(2), timeout_s=10)
    gone.cancel()
    model.release()

    _, result = await answers(running, staying)
    np.testing.assert_array_equal(result.outputs, rows_for(2).sum(axis=1))
    assert result.batch_size == 1
    assert not model.seen(1)
    assert model.sizes == [1, 1]


async def test_abandoned_requests_do_not_hold_places_in_a_full_queue(make_batcher, model):
    batcher = make_batcher(max_batch_size=16, queue_capacity=2)
    model.hold()
    running = batcher.submit(rows_for(0), timeout_s=10)
    await wait_until_started(model)
    for gone in [batcher.submit(rows_for(i), timeout_s=10) for i in (1, 2)]:
        gone.cancel()
    staying = batcher.submit(rows_for(3), timeout_s=10)
    model.release()

    _, result = await answers(running, staying)
    np.testing.assert_array_equal(result.outputs, rows_for(3).sum(axis=1))
    assert not model.seen(1) and not model.seen(2)


async def test_requests_dropped_unrun_no_longer_count_towards_a_full_batch(make_batcher, model):
    # While it waits for company the worker is woken by a full batch only;
    # rows of requests abandoned or expired in the queue must stop counting.
    batcher = make_batcher(max_batch_size=16, max_delay_ms=5000)
    model.hold()
    running = batcher.submit(rows_for(0, 16), timeout_s=10)  # a full batch: runs at once
    await wait_until_started(model)
    gone = batcher.submit(rows_for(1, 4), timeout_s=10)
    gone.cancel()
    expired = batcher.submit(rows_for(2, 4), timeout_s=0.01)
    await asyncio.sleep(0.05)
    model.release()
    _, late = await answers(running, expired, return_exceptions=True)
    assert isinstance(late, DeadlineExceeded)

    started = time.perf_counter()
    results = await answers(*(batcher.submit(rows_for(10 + i, 4), timeout_s=10) for i in range(4)))
    assert time.perf_counter() - started < 2.5  # the fourth request filled the batch
    assert [result.batch_size for result in results] == [16] * 4
    assert model.sizes == [16, 16]
    assert not model.seen(1) and not model.seen(2)


async def test_a_lone_request_never_waits_for_company_past_its_own_deadline(make_batcher, model):
    batcher = make_batcher(max_batch_size=16, max_delay_ms=5000)
    started = time.perf_counter()
    (result,) = await answers(batcher.submit(rows_for(7), timeout_s=0.2))
    assert time.perf_counter() - started < 2.0
    np.testing.assert_array_equal(result.outputs, rows_for(7).sum(axis=1))


# -- event loops ----------------------------------------------------------------------


def test_one_batcher_serves_from_one_event_loop_after_another(executor):
    model = FakeModel()
    batcher = DynamicBatcher(model, executor=executor, max_batch_size=8, max_delay_ms=5, queue_capacity=10)

    async def serve(request_id: int) -> np.ndarray:
        futures = [batcher.submit(rows_for(request_id + k), timeout_s=10) for k in range(3)]
        results = await answers(*futures)
        return np.concatenate([r.outputs for r in results])

    first = asyncio.run(serve(10))
    second = asyncio.run(serve(20))

    np.testing.assert_array_equal(first, [rows_for(10 + k).sum() for k in range(3)])
    np.testing.assert_array_equal(second, [rows_for(20 + k).sum() for k in range(3)])
    assert model.sizes == [3, 3]


def test_requests_left_queued_by_an_ended_loop_are_not_run_in_the_next(executor):
    model = FakeModel()
    batcher = DynamicBatcher(model, executor=executor, max_batch_size=2, max_delay_ms=5000, queue_capacity=10)

    async def queue_and_leave() -> None:
        # The loop ends while its worker waits for company: this request can never be answered.
        batcher.submit(rows_for(1), timeout_s=10)
        await asyncio.sleep(0.01)

    async def serve() -> np.ndarray:
        # A full batch, so it runs without waiting for the delay.
        result = await asyncio.wait_for(batcher.submit(rows_for(2, 2), timeout_s=10), 2)
        return result.outputs

    asyncio.run(queue_and_leave())
    outputs = asyncio.run(serve())

    np.testing.assert_array_equal(outputs, rows_for(2, 2).sum(axis=1))
    assert not model.seen(1)
    assert model.sizes == [2]


async def test_a_batcher_left_over_from_a_loop_that_still_exists_serves_this_one(executor):
    model = FakeModel()
    batcher = DynamicBatcher(model, executor=executor, max_batch_size=8, max_delay_ms=5, queue_capacity=10)

    async def use_once() -> None:
        await answers(batcher.submit(rows_for(1), timeout_s=10))

    # An earlier loop, run on another thread, that stays open but no longer runs.
    other = asyncio.new_event_loop()
    try:
        await asyncio.to_thread(other.run_until_complete, use_once())
        result = await asyncio.wait_for(batcher.submit(rows_for(2), timeout_s=10), 5)
        np.testing.assert_array_equal(result.outputs, rows_for(2).sum(axis=1))
        assert model.sizes == [1, 1]
        await batcher.close()
    finally:
        # Let the earlier loop process the cancellation of its worker before closing it.
        await asyncio.to_thread(other.run_until_complete, asyncio.sleep(0.01))
        other.close()


async def test_results_say_whether_their_whole_batch_came_back_finite():
    def nan_for_negatives(rows: np.ndarray) -> np.ndarray:
        return np.where(rows[:, 0] >= 0, rows[:, 0], np.nan)

    with ThreadPoolExecutor(max_workers=1) as executor:
        batcher = DynamicBatcher(nan_for_negatives, executor=executor, max_batch_size=8, max_delay_ms=50,
                                 queue_capacity=16)
        good, bad = await asyncio.gather(
            batcher.submit(np.array([[1.0, 0.0, 0.0]]), timeout_s=5),
            batcher.submit(np.array([[-1.0, 0.0, 0.0]]), timeout_s=5),
        )
        alone = await batcher.submit(np.array([[2.0, 0.0, 0.0]]), timeout_s=5)
        await batcher.close()

    assert good.batch_size == bad.batch_size == 2
    # A NaN anywhere in the batch: every request of it is checked on its own.
    assert not good.all_finite and not bad.all_finite
    assert good.outputs.tolist() == [1.0] and np.isnan(bad.outputs).all()
    assert alone.batch_size == 1 and alone.all_finite
