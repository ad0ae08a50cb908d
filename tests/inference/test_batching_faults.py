"""The dynamic batcher under faults: failing models, overload, deadlines, abandoned requests."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import pytest

from inference.batching import BatchStats
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


async def test_a_failing_batch_fails_only_its_own_requests(make_batcher, caplog):
    model = FailsOnRequest(bad_request=0)
    model.delay_s = 0.02
    observed: list[BatchStats] = []
    batcher = make_batcher(model, max_batch_size=2, on_batch=observed.append)
    futures = [batcher.submit(rows_for(i), timeout_s=10) for i in range(4)]
    with caplog.at_level(logging.ERROR, logger="inference.batching"):
        outcomes = await answers(*futures, return_exceptions=True)

    assert model.sizes == [2, 2]
    for failed in outcomes[:2]:
        assert isinstance(failed, ModelCallFailed)
        assert failed.code == "internal"
        assert str(failed) == "The model fake v1 failed on this batch."
    for i, served in enumerate(outcomes[2:], start=2):
        np.testing.assert_array_equal(served.outputs, rows_for(i).sum(axis=1))
    assert [(s.rows, s.requests, s.failed) for s in observed] == [(2, 2, True), (2, 2, False)]
    # A failed call took as long as it ran, like any other.
    assert all(20 <= s.inference_ms < 2000 for s in observed), observed
    (logged,) = caplog.records
    assert logged.getMessage() == "Model call for fake v1 failed on a batch of 2 rows"
    assert isinstance(logged.exc_info[1], ValueError)


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


@pytest.mark.parametrize("broken_output", [lambda batch: batch.sum(axis=1).tolist(), lambda batch: 7.0],
                         ids=["a-list", "a-number"])
async def test_a_model_returning_no_array_fails_its_batch_and_the_batcher_serves_on(make_batcher, model,
                                                                                   broken_output):
    broken = make_batcher(broken_output, name="broken v1")
    outcomes = await answers(*[broken.submit(rows_for(i), timeout_s=10) for i in range(3)], return_exceptions=True)
    assert all(isinstance(failed, ModelCallFailed) for failed in outcomes), outcomes
    assert "not an array of outputs" in str(outcomes[0])
    # Its worker is still there: the next request is answered (with the same failure).
    (again,) = await answers(broken.submit(rows_for(5), timeout_s=10), return_exceptions=True)
    assert isinstance(again, ModelCallFailed)
    serving = make_batcher(model)
    (result,) = await answers(serving.submit(rows_for(9), timeout_s=10))
    assert result.outputs.tolist() == [9 + 0.0 + 1000.0]


async def test_an_observer_that_raises_does_not_break_serving(make_batcher, model, caplog):
    def broken_observer(stats: BatchStats) -> None:
        raise RuntimeError("the metrics backend is down")

    batcher = make_batcher(on_batch=broken_observer)
    with caplog.at_level(logging.ERROR, logger="inference.batching"):
        (first,) = await answers(batcher.submit(rows_for(1), timeout_s=10))
        (second,) = await answers(batcher.submit(rows_for(2), timeout_s=10))

    np.testing.assert_array_equal(first.outputs, rows_for(1).sum(axis=1))
    np.testing.assert_array_equal(second.outputs, rows_for(2).sum(axis=1))
    assert model.calls == 2
    assert [record.getMessage() for record in caplog.records] == ["Batch observer for fake v1 failed"] * 2
    assert all(isinstance(record.exc_info[1], RuntimeError) for record in caplog.records)


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
        words = str(expired).split()
        assert words[:3] == ["The", "request", "waited"]
        assert 40 <= int(words[3]) < 2000  # it waited about 50 ms, for the model to be released
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


async def test_an_abandoned_or_expired_request_does_not_split_its_neighbours_batch(make_batcher, model):
    batcher = make_batcher(max_batch_size=16)
    model.hold()
    running = batcher.submit(rows_for(0), timeout_s=10)
    await wait_until_started(model)
    first = batcher.submit(rows_for(1), timeout_s=10)
    gone = batcher.submit(rows_for(2), timeout_s=10)
    second = batcher.submit(rows_for(3), timeout_s=10)
    expired = batcher.submit(rows_for(4), timeout_s=0.01)
    third = batcher.submit(rows_for(5), timeout_s=10)
    gone.cancel()
    await asyncio.sleep(0.05)
    model.release()

    results = await answers(running, first, second, third)
    assert [result.batch_size for result in results] == [1, 3, 3, 3]
    assert model.sizes == [1, 3]
    with pytest.raises(DeadlineExceeded):
        await answers(expired)


async def test_abandoned_requests_do_not_hold_places_in_a_full_queue(make_batcher, model):
    batcher = make_batcher(max_batch_size=16, queue_capacity=2)
    model.hold()
    running = batcher.submit(rows_for(0), timeout_s=10)
    await wait_until_started(model)
    for gone in [batcher.submit(rows_for(i), timeout_s=10) for i in (1, 2)]:
        gone.cancel()
    staying = batcher.submit(rows_for(3), timeout_s=10)
    assert batcher.queue_depth == 1
    model.release()

    _, result = await answers(running, staying)
    np.testing.assert_array_equal(result.outputs, rows_for(3).sum(axis=1))
    assert not model.seen(1) and not model.seen(2)


async def arriving_one_by_one(batcher, requests):
    """Submit one-row ``requests``, giving the worker a look at the queue between arrivals."""
    futures = []
    for request in requests:
        await asyncio.sleep(0.005)
        futures.append(batcher.submit(rows_for(request), timeout_s=10))
    return futures


async def test_abandoned_requests_dropped_at_a_full_queue_no_longer_count_towards_a_full_batch(make_batcher, model):
    batcher = make_batcher(max_batch_size=4, max_delay_ms=5000, queue_capacity=4)
    model.hold()
    running = batcher.submit(rows_for(0, 4), timeout_s=10)  # a full batch: runs at once
    await wait_until_started(model)
    waiting = batcher.submit(rows_for(1), timeout_s=10)
    for gone in [batcher.submit(rows_for(i, 2), timeout_s=10) for i in (2, 3, 4)]:
        gone.cancel()
    staying = [waiting, batcher.submit(rows_for(5), timeout_s=10)]  # the queue looked full: the gone are dropped
    assert batcher.queue_depth == 2
    model.release()
    await answers(running)

    staying += await arriving_one_by_one(batcher, (6, 7))
    await answers(*staying)
    assert model.sizes == [4, 4]  # the last arrival filled the batch, not an abandoned request's rows


async def calls_reached(model, calls: int) -> None:
    while model.calls < calls:
        await asyncio.sleep(0.001)


async def test_requests_dropped_unrun_no_longer_count_towards_a_full_batch(make_batcher, model):
    # While it waits for company the worker is woken by a full batch only;
    # rows of requests abandoned or expired in the queue must stop counting,
    # wherever in the queue they were dropped.
    batcher = make_batcher(max_batch_size=16, max_delay_ms=5000)
    model.hold()
    running = batcher.submit(rows_for(0, 16), timeout_s=10)  # a full batch: runs at once
    await wait_until_started(model)
    gone_first = batcher.submit(rows_for(1, 4), timeout_s=10)
    hurried = batcher.submit(rows_for(2), timeout_s=0.2)  # waits for company 100 ms at most
    gone_later = batcher.submit(rows_for(3, 4), timeout_s=10)
    expired = batcher.submit(rows_for(4, 4), timeout_s=0.01)
    gone_first.cancel()
    gone_later.cancel()
    await asyncio.sleep(0.05)
    model.release()
    _, served, late = await answers(running, hurried, expired, return_exceptions=True)
    assert served.batch_size == 1
    assert isinstance(late, DeadlineExceeded)

    # The model busy again, then one row at a time while it waits for company,
    # so that a single row too many or too few counted shows.
    model.hold()
    blocker = batcher.submit(rows_for(9, 16), timeout_s=10)
    await asyncio.wait_for(calls_reached(model, 3), 5)
    waiting = batcher.submit(rows_for(10), timeout_s=10)
    model.release()
    started = time.perf_counter()
    results = await answers(waiting, *await arriving_one_by_one(batcher, range(11, 26)))
    await answers(blocker)
    assert time.perf_counter() - started < 2.5  # the sixteenth request filled the batch
    assert [result.batch_size for result in results] == [16] * 16
    assert model.sizes == [16, 1, 16, 16]
    assert not any(model.seen(request) for request in (1, 3, 4))


async def test_a_request_waits_for_company_half_its_own_deadline_at_most(make_batcher, model):
    batcher = make_batcher(max_batch_size=16, max_delay_ms=5000)
    model.hold()
    busy = batcher.submit(rows_for(0), timeout_s=10)  # the model is busy: what queues behind it may wait
    await wait_until_started(model)
    started = time.perf_counter()
    queued = batcher.submit(rows_for(7), timeout_s=0.2)
    model.release()
    _, result = await answers(busy, queued)
    assert time.perf_counter() - started < 2.0
    assert 95 <= result.queue_ms < 1000  # half of its 200 ms
    np.testing.assert_array_equal(result.outputs, rows_for(7).sum(axis=1))
