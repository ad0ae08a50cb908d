"""The dynamic batcher's batches: their size, how long they wait, its options and timings."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import numpy as np
import pytest

from inference.batching import DynamicBatcher
from inference.exceptions import DeadlineExceeded

from .conftest import FakeModel, answers, rows_for, wait_until_started

# -- the size limit -------------------------------------------------------------------


async def test_batches_never_exceed_max_batch_size_and_each_request_gets_its_own_rows(make_batcher, model):
    batcher = make_batcher(max_batch_size=16, max_delay_ms=20)
    requests = {i: rows_for(i) for i in range(100)}
    futures = {i: batcher.submit(rows, timeout_s=10) for i, rows in requests.items()}
    results = dict(zip(futures, await answers(*futures.values()), strict=True))

    # All 100 were queued before the worker first ran, so every batch but the last is full.
    assert model.sizes == [16] * 6 + [4]
    for i, result in results.items():
        np.testing.assert_array_equal(result.outputs, requests[i].sum(axis=1))
        assert result.batch_size == model.batch_holding(i).shape[0]


async def test_a_request_is_never_split_across_batches(make_batcher, model):
    batcher = make_batcher(max_batch_size=16)
    requests = {i: rows_for(i, 5) for i in range(7)}
    futures = {i: batcher.submit(rows, timeout_s=10) for i, rows in requests.items()}
    results = dict(zip(futures, await answers(*futures.values()), strict=True))

    assert model.sizes == [15, 15, 5]
    for i, result in results.items():
        assert result.outputs.shape == (5,)
        np.testing.assert_array_equal(result.outputs, requests[i].sum(axis=1))
        assert result.batch_size == model.batch_holding(i).shape[0]


async def test_a_request_larger_than_a_batch_runs_alone(make_batcher, model):
    batcher = make_batcher(max_batch_size=4)
    small_before = batcher.submit(rows_for(1), timeout_s=10)
    large = batcher.submit(rows_for(2, 10), timeout_s=10)
    small_after = batcher.submit(rows_for(3), timeout_s=10)
    before, big, after = await answers(small_before, large, small_after)

    assert model.sizes == [1, 10, 1]
    assert big.batch_size == 10
    np.testing.assert_array_equal(big.outputs, rows_for(2, 10).sum(axis=1))
    assert before.batch_size == after.batch_size == 1


async def test_a_lone_request_larger_than_a_batch_does_not_wait_for_the_delay(make_batcher, model):
    batcher = make_batcher(max_batch_size=4, max_delay_ms=5000)
    started = time.perf_counter()
    result = await asyncio.wait_for(batcher.submit(rows_for(1, 9), timeout_s=10), 2)

    assert (time.perf_counter() - started) < 0.5
    assert result.batch_size == 9
    assert model.sizes == [9]


# -- the delay limit ------------------------------------------------------------------


async def busy(batcher, model, first_id: int = 0):
    """Make the model busy: a first request inside a held model call. Returns its future."""
    model.hold()
    first = batcher.submit(rows_for(first_id), timeout_s=10)
    await wait_until_started(model)
    return first


@pytest.mark.parametrize("max_delay_ms", [0, 5000])
async def test_a_lone_request_on_an_idle_model_runs_at_once_whatever_max_delay_ms(make_batcher, model, max_delay_ms):
    batcher = make_batcher(max_batch_size=16, max_delay_ms=max_delay_ms)
    started = time.perf_counter()
    (result,) = await answers(batcher.submit(rows_for(1), timeout_s=10))

    assert result.queue_ms < 40
    assert (time.perf_counter() - started) < 0.5
    assert model.sizes == [1]


async def test_requests_that_arrive_while_a_batch_runs_form_the_next_one(make_batcher, model):
    batcher = make_batcher(max_batch_size=16, max_delay_ms=0)
    first = await busy(batcher, model)
    later = [batcher.submit(rows_for(i), timeout_s=10) for i in range(1, 6)]
    model.release()
    await answers(first, *later)

    assert model.sizes == [1, 5]


async def test_a_busy_model_waits_max_delay_ms_for_company(make_batcher, model):
    batcher = make_batcher(max_batch_size=16, max_delay_ms=50)
    first = await busy(batcher, model)
    queued_while_busy = batcher.submit(rows_for(1), timeout_s=10)
    model.release()
    _, result = await answers(first, queued_while_busy)

    # Counted from its arrival; the event loop's timers may fire up to a clock tick early.
    assert 48 <= result.queue_ms < 500
    assert model.sizes == [1, 1]


async def test_a_batch_that_fills_before_the_delay_runs_at_once(make_batcher, model):
    batcher = make_batcher(max_batch_size=4, max_delay_ms=5000)
    first = await busy(batcher, model)
    second = batcher.submit(rows_for(1), timeout_s=10)
    started = time.perf_counter()
    model.release()
    await asyncio.sleep(0.01)  # the worker is now waiting for company
    others = [batcher.submit(rows_for(i), timeout_s=10) for i in (2, 3, 4)]
    results = await asyncio.wait_for(asyncio.gather(first, second, *others), 2)

    assert (time.perf_counter() - started) < 0.5
    assert model.sizes == [1, 4]
    assert [r.batch_size for r in results[1:]] == [4, 4, 4, 4]


async def test_the_delay_counts_from_the_oldest_request_not_the_newest(make_batcher, model):
    batcher = make_batcher(max_batch_size=100, max_delay_ms=100)
    first = await busy(batcher, model, first_id=99)
    started = time.perf_counter()
    oldest = batcher.submit(rows_for(0), timeout_s=10)
    model.release()
    answered_at: list[float] = []
    oldest.add_done_callback(lambda _: answered_at.append(time.perf_counter()))
    futures = [oldest]
    # Keep a trickle of arrivals coming for three times the delay.
    for i in range(1, 11):
        await asyncio.sleep(0.03)
        futures.append(batcher.submit(rows_for(i), timeout_s=10))
    results = await answers(first, *futures)

    # Had each arrival restarted the wait, the oldest's answer would come after about 400 ms.
    assert 95 <= results[1].queue_ms < 250
    assert (answered_at[0] - started) * 1000.0 < 250
    assert model.calls >= 3
    assert sum(model.sizes) == 12


async def test_a_model_that_went_idle_runs_the_next_request_at_once_again(make_batcher, model):
    batcher = make_batcher(max_batch_size=16, max_delay_ms=5000)
    first = await busy(batcher, model)
    model.release()
    await answers(first)
    await asyncio.sleep(0.01)  # the queue emptied: the model is idle again
    (result,) = await answers(batcher.submit(rows_for(1), timeout_s=10))

    assert result.queue_ms < 40


# -- the empty queue ------------------------------------------------------------------


async def test_an_idle_worker_neither_calls_the_model_nor_spins(make_batcher, model):
    batcher = make_batcher(max_delay_ms=10)
    await answers(batcher.submit(rows_for(1), timeout_s=10))
    assert model.calls == 1

    cpu_before = time.thread_time()
    await asyncio.sleep(0.2)
    cpu_ms = (time.thread_time() - cpu_before) * 1000.0

    assert model.calls == 1
    assert batcher.queue_depth == 0
    # A worker polling an empty queue would burn most of the 200 ms on this thread.
    assert cpu_ms < 40


async def test_a_worker_whose_only_request_was_abandoned_never_calls_the_model(make_batcher, model):
    batcher = make_batcher(max_delay_ms=0)
    future = batcher.submit(rows_for(1), timeout_s=10)
    future.cancel()
    await asyncio.sleep(0.1)

    assert model.calls == 0
    assert batcher.queue_depth == 0


# -- configuration --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_batch_size", 0),
        ("max_batch_size", -4),
        ("max_batch_size", 8.0),
        ("max_batch_size", "16"),
        ("max_batch_size", None),
        ("max_delay_ms", -1),
        ("max_delay_ms", float("nan")),
        ("max_delay_ms", float("inf")),
        ("max_delay_ms", "5"),
        ("queue_capacity", 0),
        ("queue_capacity", 2.5),
        ("queue_capacity", None),
    ],
)
def test_bad_options_are_refused_at_construction(option, value):
    options = {"max_batch_size": 16, "max_delay_ms": 5, "queue_capacity": 100, option: value}
    with pytest.raises(ValueError) as excinfo:
        DynamicBatcher(FakeModel(), executor=None, name="iris v2", **options)
    message = str(excinfo.value)
    assert message.startswith(f"{option} for iris v2 must be ")
    assert message.endswith(f", not {value!r}.")


def test_good_options_are_accepted():
    batcher = DynamicBatcher(
        FakeModel(), executor=None, max_batch_size=1, max_delay_ms=0.5, queue_capacity=1, name="iris v2"
    )
    assert batcher.max_batch_size == 1
    assert batcher.max_delay_s == pytest.approx(0.0005)
    assert batcher.queue_capacity == 1


def test_a_batcher_given_no_name_calls_its_model_model():
    with pytest.raises(ValueError, match=r"^max_batch_size for model must be a positive integer, not 0\.$"):
        DynamicBatcher(FakeModel(), executor=None, max_batch_size=0, max_delay_ms=0, queue_capacity=1)


async def test_the_model_is_called_in_the_batcher_s_executor(executor):
    threads: list[str] = []

    def call(rows: np.ndarray) -> np.ndarray:
        threads.append(threading.current_thread().name)
        return rows.sum(axis=1)

    batcher = DynamicBatcher(call, executor=executor, max_batch_size=1, max_delay_ms=0, queue_capacity=4)
    await answers(*(batcher.submit(rows_for(i), timeout_s=10) for i in range(3)))
    await batcher.close()
    assert len(threads) == 3
    assert all(name.startswith("test-inference") for name in threads), threads


# -- timings --------------------------------------------------------------------------


async def test_results_report_how_long_the_request_queued_and_the_model_ran(make_batcher):
    model = FakeModel(delay_s=0.1)
    batcher = make_batcher(model, max_batch_size=1)
    first = batcher.submit(rows_for(1), timeout_s=10)
    second = batcher.submit(rows_for(2), timeout_s=10)
    a, b = await answers(first, second)

    assert 100 <= a.inference_ms < 400
    assert 100 <= b.inference_ms < 400
    assert a.queue_ms < 50
    # The second request waited for the whole of the first call.
    assert 100 <= b.queue_ms < 400


async def test_queue_time_and_the_deadline_count_from_when_the_request_arrived(make_batcher):
    batcher = make_batcher(max_batch_size=16)
    arrived = time.perf_counter() - 0.2  # the frame was read a while before it was submitted
    (result,) = await answers(batcher.submit(rows_for(1), timeout_s=10, now=arrived))
    assert 200 <= result.queue_ms < 1000
    with pytest.raises(DeadlineExceeded):
        await answers(batcher.submit(rows_for(2), timeout_s=0.1, now=arrived))


async def test_the_rows_inside_the_model_are_counted_while_it_runs(make_batcher, model):
    batcher = make_batcher(max_batch_size=16)
    assert (batcher.queue_depth, batcher.in_flight_rows) == (0, 0)
    model.hold()
    running = batcher.submit(rows_for(1, 3), timeout_s=10)
    await wait_until_started(model)
    waiting = batcher.submit(rows_for(2), timeout_s=10)
    assert (batcher.queue_depth, batcher.in_flight_rows) == (1, 3)
    model.release()
    await answers(running, waiting)
    assert (batcher.queue_depth, batcher.in_flight_rows) == (0, 0)


# -- when an overloaded client should retry ------------------------------------------------


async def test_retry_after_counts_the_batches_queued_ahead(make_batcher):
    def advice_for(queued: int) -> int:
        batcher = make_batcher(max_batch_size=4)
        for i in range(queued):  # the worker cannot run before this coroutine yields
            batcher.submit(rows_for(i), timeout_s=10)
        return batcher.retry_after_ms()

    by_queue = {queued: advice_for(queued) for queued in (0, 1, 4, 5, 8, 9, 12)}
    # Before any model call the batcher knows no batch time: it counts the least, 1 ms a batch ahead.
    one_batch = by_queue[0]
    assert one_batch == 1
    assert by_queue == {0: one_batch, 1: one_batch, 4: one_batch, 5: 2 * one_batch, 8: 2 * one_batch,
                        9: 3 * one_batch, 12: 3 * one_batch}


async def test_retry_after_is_the_batches_ahead_times_the_smoothed_batch_time(make_batcher):
    model = FakeModel(delay_s=0.02)
    batcher = make_batcher(model, max_batch_size=4)
    for i in range(20):  # one batch at a time: the batcher learns that a batch takes about 20 ms
        await answers(batcher.submit(rows_for(i), timeout_s=10))
    batch_ms = batcher.retry_after_ms()
    assert 20 <= batch_ms <= 40

    model.hold()
    running = batcher.submit(rows_for(100), timeout_s=10)
    await wait_until_started(model)
    advice = {}
    queued = []
    for n in range(1, 13):
        queued.append(batcher.submit(rows_for(100 + n), timeout_s=10))
        advice[n] = batcher.retry_after_ms()
    model.release()
    await answers(running, *queued)

    for n, retry_after_ms in advice.items():
        batches_ahead = math.ceil(n / 4)
        # batch_ms is the smoothed batch time rounded up: the advice lies within a millisecond a batch of it.
        assert batches_ahead * (batch_ms - 1) < retry_after_ms <= batches_ahead * batch_ms, (n, advice)
    assert advice[1] == advice[4] < advice[5] == advice[8] < advice[9] == advice[12]


async def test_retry_after_follows_the_model_when_it_slows_down(make_batcher):
    model = FakeModel()
    batcher = make_batcher(model, max_batch_size=4)
    for i in range(10):
        await answers(batcher.submit(rows_for(i), timeout_s=10))
    fast_ms = batcher.retry_after_ms()
    model.delay_s = 0.05
    slowing = []
    for i in range(10):
        await answers(batcher.submit(rows_for(i), timeout_s=10))
        slowing.append(batcher.retry_after_ms())

    assert fast_ms < 20
    # Smoothed: one slow batch does not make the advice a full batch time at once; ten nearly do.
    assert slowing[0] < 30
    assert slowing == sorted(slowing)
    assert 40 <= slowing[-1] <= 100
