"""The batcher over its life: event loops, closing, a worker that dies, and what each batch reports."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from inference.batching import BatchStats, DynamicBatcher

from .conftest import FakeModel, answers, rows_for

# -- event loops ----------------------------------------------------------------------


def workers(loop: asyncio.AbstractEventLoop) -> list[asyncio.Task]:
    """The worker tasks on ``loop`` of a batcher left with its default name, found by the name a task dump shows."""
    return [task for task in asyncio.all_tasks(loop) if task.get_name() == "batcher:model"]


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
        # The loop ends while the model is busy: the request queued behind it can never be answered.
        model.hold()
        batcher.submit(rows_for(0, 2), timeout_s=10)
        await asyncio.to_thread(model.started.wait, 5)
        batcher.submit(rows_for(1), timeout_s=10)
        await asyncio.sleep(0.01)

    async def serve() -> np.ndarray:
        model.release()
        result = await asyncio.wait_for(batcher.submit(rows_for(2, 2), timeout_s=10), 2)
        return result.outputs

    asyncio.run(queue_and_leave())
    outputs = asyncio.run(serve())

    np.testing.assert_array_equal(outputs, rows_for(2, 2).sum(axis=1))
    assert not model.seen(1)
    assert model.sizes == [2, 2]


async def test_a_batcher_left_over_from_a_loop_that_still_exists_serves_this_one(executor):
    model = FakeModel()
    batcher = DynamicBatcher(model, executor=executor, max_batch_size=8, max_delay_ms=5, queue_capacity=10)

    async def use_once() -> None:
        await answers(batcher.submit(rows_for(1), timeout_s=10))

    # An earlier loop, run on another thread, that stays open but no longer runs.
    other = asyncio.new_event_loop()
    try:
        await asyncio.to_thread(other.run_until_complete, use_once())
        (earlier_worker,) = workers(other)
        result = await asyncio.wait_for(batcher.submit(rows_for(2), timeout_s=10), 5)
        np.testing.assert_array_equal(result.outputs, rows_for(2).sum(axis=1))
        assert model.sizes == [1, 1]
        assert len(workers(asyncio.get_running_loop())) == 1
        await batcher.close()
    finally:
        # Let the earlier loop process the cancellation of its worker before closing it.
        await asyncio.to_thread(other.run_until_complete, asyncio.sleep(0.01))
        other.close()
    # The earlier loop's worker was told to stop: it would otherwise wait there forever.
    assert earlier_worker.cancelled()


# -- closing ----------------------------------------------------------------------------


async def test_close_serves_what_is_queued_and_in_the_model_first(make_batcher, model):
    model.delay_s = 0.05  # long enough for close to look while the last request is in the model
    batcher = make_batcher(max_batch_size=1)
    model.hold()
    futures = [batcher.submit(rows_for(i), timeout_s=10) for i in range(3)]
    await asyncio.sleep(0.01)  # one request in the model, two queued
    closing = asyncio.ensure_future(batcher.close())
    await asyncio.sleep(0.05)
    assert not closing.done()
    model.release()
    await asyncio.wait_for(closing, 5)
    assert all(future.done() for future in futures)
    assert [result.outputs.tolist() for result in await answers(*futures)] == [[1000.0], [1001.0], [1002.0]]


async def test_close_returns_as_soon_as_the_queue_is_served(make_batcher):
    batcher = make_batcher(max_batch_size=1)
    futures = [batcher.submit(rows_for(i), timeout_s=10) for i in range(3)]
    started = time.perf_counter()
    await asyncio.wait_for(batcher.close(), 5)
    assert time.perf_counter() - started < 0.5
    assert all(future.done() for future in futures)


async def test_a_closed_batcher_serves_again_when_asked(make_batcher):
    batcher = make_batcher()
    await answers(batcher.submit(rows_for(1), timeout_s=10))
    await batcher.close()
    (result,) = await answers(batcher.submit(rows_for(2), timeout_s=10))
    np.testing.assert_array_equal(result.outputs, rows_for(2).sum(axis=1))


# -- a worker that died ----------------------------------------------------------------------


class ObserverCrash(BaseException):
    """Not an Exception: it gets past the guard around the observer, and takes the worker down."""


async def test_a_worker_that_died_is_restarted_by_the_next_request_and_says_so(make_batcher, caplog):
    crashes = [ObserverCrash("the observer took the worker down")]

    def observer(stats: BatchStats) -> None:
        if crashes:
            raise crashes.pop()

    batcher = make_batcher(on_batch=observer)
    (first,) = await answers(batcher.submit(rows_for(1), timeout_s=10))  # answered before the observer ran
    await asyncio.sleep(0.01)
    with caplog.at_level(logging.ERROR, logger="inference.batching"):
        (second,) = await answers(batcher.submit(rows_for(2), timeout_s=10))

    np.testing.assert_array_equal(first.outputs, rows_for(1).sum(axis=1))
    np.testing.assert_array_equal(second.outputs, rows_for(2).sum(axis=1))
    (logged,) = caplog.records
    assert (logged.levelno, logged.getMessage()) == (logging.ERROR,
                                                     "Batcher for fake v1 stopped unexpectedly; restarting it")
    assert isinstance(logged.exc_info[1], ObserverCrash)


# -- what a batch reports ----------------------------------------------------------------------


async def test_the_observer_hears_each_call_s_size_time_and_the_queue_it_left(make_batcher):
    observed: list[BatchStats] = []
    batcher = make_batcher(FakeModel(delay_s=0.02), max_batch_size=2, on_batch=observed.append)
    await answers(*(batcher.submit(rows_for(i), timeout_s=10) for i in range(5)))

    assert [(s.rows, s.requests, s.failed, s.queue_depth) for s in observed] == [
        (2, 2, False, 3), (2, 2, False, 1), (1, 1, False, 0),
    ]
    assert all(20 <= s.inference_ms < 2000 for s in observed), observed


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
