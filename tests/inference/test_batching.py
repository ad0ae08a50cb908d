"""The dynamic batcher, driven with a fake model call in a real executor thread."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from inference.batching import BatchStats, DynamicBatcher
from inference.exceptions import DeadlineExceeded, ModelCallFailed, Overloaded

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


async def test_a_lone_request_waits_max_delay_ms_for_company(make_batcher, model):
    batcher = make_batcher(max_batch_size=16, max_delay_ms=50)
    started = time.perf_counter()
    (result,) = await answers(batcher.submit(rows_for(1), timeout_s=10))
    elapsed_ms = (time.perf_counter() - started) * 1000.0

    # The event loop's timers may fire up to a clock tick early.
    assert 48 <= result.queue_ms < 500
    assert 48 <= elapsed_ms < 500
    assert model.sizes == [1]


async def test_a_lone_request_is_run_at_once_when_max_delay_ms_is_zero(make_batcher, model):
    batcher = make_batcher(max_batch_size=16, max_delay_ms=0)
    (result,) = await answers(batcher.submit(rows_for(1), timeout_s=10))

    assert result.queue_ms < 40
    assert model.sizes == [1]


async def test_a_batch_that_fills_before_the_delay_runs_at_once(make_batcher, model):
    batcher = make_batcher(max_batch_size=4, max_delay_ms=5000)
    started = time.perf_counter()
    first = batcher.submit(rows_for(1), timeout_s=10)
    await asyncio.sleep(0.01)  # the worker is now waiting for company
    others = [batcher.submit(rows_for(i), timeout_s=10) for i in (2, 3, 4)]
    results = await asyncio.wait_for(asyncio.gather(first, *others), 2)

    assert (time.perf_counter() - started) < 0.5
    assert model.sizes == [4]
    assert [r.batch_size for r in results] == [4, 4, 4, 4]


async def test_the_delay_counts_from_the_oldest_request_not_the_newest(make_batcher, model):
    batcher = make_batcher(max_batch_size=100, max_delay_ms=100)
    started = time.perf_counter()
    first = batcher.submit(rows_for(0), timeout_s=10)
    answered_at: list[float] = []
    first.add_done_callback(lambda _: answered_at.append(time.perf_counter()))
    futures = [first]
    # Keep a trickle of arrivals coming for three times the delay.
    for i in range(1, 11):
        await asyncio.sleep(0.03)
        futures.append(batcher.submit(rows_for(i), timeout_s=10))
    results = await answers(*futures)

    # Had each arrival restarted the wait, the first answer would come after about 400 ms.
    assert 95 <= results[0].queue_ms < 250
    assert (answered_at[0] - started) * 1000.0 < 250
    assert model.calls >= 2
    assert sum(model.sizes) == 11


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
