"""Dynamic batching: requests from every connection gathered into one model call.

Rules, after Ray Serve's ``batching.py`` and MLServer's adaptive batcher:

- each request owns a future; a failed batch sets the exception on each of its
  requests' futures and on no other;
- the model's output length is checked against the batch length;
- the queue and the worker task are created inside the running event loop;
- an idle model never waits for company: the worker sleeps until a request
  arrives and runs it at once (with whatever arrived in the same pass of the
  event loop); requests that arrive while a batch runs form the next one.
  Only a busy model (its last batch left requests queued) waits, and only
  with ``max_delay_ms`` above zero, for a fuller batch; while it waits it is
  woken only when a full batch is queued or the oldest request's delay is
  up, not by every request in between;
- the queue is bounded: a full queue raises ``Overloaded`` at submission;
- a request whose deadline passed while it waited is answered ``timeout`` and
  never run;
- the model call runs in an executor thread, never on the event loop, unless
  the batcher was given ``inline_below_ms`` and the model's calls measure
  shorter than that (``inline_calls``): then the hand-off to a thread would
  cost more than the call. An inline call is followed by a turn of the
  event loop before the next batch.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from .exceptions import DeadlineExceeded, ModelCallFailed, Overloaded
from .inline_calls import InlinePolicy

logger = logging.getLogger(__name__)

ModelCall = Callable[[np.ndarray], np.ndarray]


@dataclass(slots=True)
class BatchResult:
    """One request's share of a batch, with what the batch cost."""

    outputs: np.ndarray
    batch_size: int
    queue_ms: float
    inference_ms: float
    #: Every value of the whole batch's output is a finite number (checked once per batch).
    all_finite: bool = False


@dataclass(slots=True)
class _Pending:
    rows: np.ndarray
    future: asyncio.Future[BatchResult]
    enqueued_at: float
    deadline: float


@dataclass(slots=True)
class BatchStats:
    """Facts about one finished model call, handed to the batcher's observer."""

    rows: int
    requests: int
    inference_ms: float
    failed: bool
    #: Requests still waiting in the queue when the call finished.
    queue_depth: int = 0
    #: The call ran on the event loop rather than in the model's thread.
    inline: bool = False


class DynamicBatcher:
    """Gathers queued requests for one model version into batches of at most ``max_batch_size`` rows."""

    def __init__(
        self,
        call: ModelCall,
        *,
        executor: Executor | None,
        max_batch_size: int,
        max_delay_ms: float,
        queue_capacity: int,
        name: str = "model",
        on_batch: Callable[[BatchStats], None] | None = None,
        inline_below_ms: float = 0.0,
    ) -> None:
        if not isinstance(max_batch_size, int) or max_batch_size < 1:
            raise ValueError(f"max_batch_size for {name} must be a positive integer, not {max_batch_size!r}.")
        if not isinstance(max_delay_ms, (int, float)) or not math.isfinite(max_delay_ms) or max_delay_ms < 0:
            raise ValueError(f"max_delay_ms for {name} must be a finite number >= 0, not {max_delay_ms!r}.")
        if not isinstance(queue_capacity, int) or queue_capacity < 1:
            raise ValueError(f"queue_capacity for {name} must be a positive integer, not {queue_capacity!r}.")
        if not isinstance(inline_below_ms, (int, float)) or not math.isfinite(inline_below_ms) or inline_below_ms < 0:
            raise ValueError(f"inline_below_ms for {name} must be a finite number >= 0, not {inline_below_ms!r}.")
        self.call = call
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_ms / 1000.0
        self.queue_capacity = queue_capacity
        self.name = name
        self.on_batch = on_batch
        self.inline_calls = InlinePolicy(inline_below_ms / 1000.0)
        self._queue: deque[_Pending] = deque()
        #: Rows in ``_queue``, abandoned requests included until they are popped.
        self._queued_rows = 0
        #: ``submit`` wakes the worker once this many rows are queued: one while
        #: it sleeps on an empty queue, a whole batch while it waits for company.
        self._wake_at_rows = 1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        # Smoothed cost of one batch, used to tell an overloaded client when to retry.
        self._batch_ms_ewma = 1.0
        self.in_flight_rows = 0

    # -- submission -----------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def retry_after_ms(self) -> int:
        batches_ahead = max(1, math.ceil(len(self._queue) / self.max_batch_size))
        return max(1, math.ceil(batches_ahead * self._batch_ms_ewma))

    def submit(self, rows: np.ndarray, *, timeout_s: float, now: float | None = None) -> asyncio.Future[BatchResult]:
        """Queue one request's rows; the returned future resolves when its batch has run.

        Must be called from the event loop. Raises ``Overloaded`` at once when
        the queue is full, so the caller can answer without waiting.
        """
        loop = self._ensure_running()
        if len(self._queue) >= self.queue_capacity and self._drop_abandoned() >= self.queue_capacity:
            # The bound is the decision: past it, queueing only adds latency
            # for everyone, so the client is told to come back later.
            raise Overloaded(
                f"The queue for {self.name} is full ({self.queue_capacity} requests waiting).",
                retry_after_ms=self.retry_after_ms(),
            )
        now = time.perf_counter() if now is None else now
        future: asyncio.Future[BatchResult] = loop.create_future()
        self._queue.append(_Pending(rows, future, now, now + timeout_s))
        self._queued_rows += rows.shape[0]
        if self._queued_rows >= self._wake_at_rows:
            wakeup = self._wakeup
            if wakeup is not None and not wakeup.is_set():
                wakeup.set()
        return future

    def _drop_abandoned(self) -> int:
        """Forget requests whose clients went away; return how many are still waiting.

        Only called when the queue looks full, so the common path stays O(1).
        """
        live = [pending for pending in self._queue if not pending.future.done()]
        if len(live) != len(self._queue):
            self._queue.clear()
            self._queue.extend(live)
            self._queued_rows = sum(pending.rows.shape[0] for pending in live)
        return len(live)

    def _ensure_running(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        wakeup = self._wakeup
        if self._loop is not loop or wakeup is None:
            # Created inside the running loop: an Event or a task bound to
            # another loop would never wake this one. Requests queued on a
            # loop that is gone can never be answered there.
            if self._worker is not None and self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._worker.cancel)
            self._loop = loop
            self._wakeup = wakeup = asyncio.Event()
            self._queue.clear()
            self._queued_rows = 0
            self._wake_at_rows = 1
            self._worker = None
        if self._worker is None or self._worker.done():
            if self._worker is not None and not self._worker.cancelled() and self._worker.exception():
                logger.error("Batcher for %s stopped unexpectedly; restarting it", self.name,
                             exc_info=self._worker.exception())
            self._worker = loop.create_task(self._work(wakeup), name=f"batcher:{self.name}")
        return loop

    async def close(self) -> None:
        """Stop the worker after the requests already queued have been served."""
        while self._queue or self.in_flight_rows:
            await asyncio.sleep(0.001)
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None

    # -- the worker -----------------------------------------------------------------

    async def _work(self, wakeup: asyncio.Event) -> None:
        queue = self._queue
        # Whether the model is busy: requests were queued when its last batch
        # ended. An idle model runs what arrives at once, so a request that
        # finds it free pays no delay for company that is not coming.
        busy = False
        while True:
            if not queue:
                busy = False
                wakeup.clear()
                await wakeup.wait()
                continue
            if busy and self.max_delay_s > 0 and self._queued_rows < self.max_batch_size:
                await self._wait_for_more(queue, wakeup)
            batch = self._take(queue)
            if batch and await self._run(batch):
                # An inline call never gave the event loop a turn: let it read and
                # write before the next batch, so replies leave and newcomers join.
                await asyncio.sleep(0)
            busy = bool(queue)

    async def _wait_for_more(self, queue: deque[_Pending], wakeup: asyncio.Event) -> None:
        """Wait, at most until the oldest request is ``max_delay_ms`` old, for a full batch."""
        while queue and queue[0].future.done():  # the client went away: its delay is no one's
            self._queued_rows -= queue.popleft().rows.shape[0]
        if not queue:
            return
        # Waiting for company never spends more than half of the oldest
        # request's time budget: it is there to run, not to time out.
        oldest = queue[0]
        fill_by = oldest.enqueued_at + min(self.max_delay_s, (oldest.deadline - oldest.enqueued_at) / 2)
        remaining = fill_by - time.perf_counter()
        if remaining <= 0:
            return
        wakeup.clear()
        self._wake_at_rows = self.max_batch_size
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a
        # cancellation that arrives as the awaited event completes.
        try:
            async with asyncio.timeout(remaining):
                await wakeup.wait()
        except TimeoutError:
            pass
        finally:
            self._wake_at_rows = 1

    def _take(self, queue: deque[_Pending]) -> list[_Pending]:
        """Pop requests up to ``max_batch_size`` rows, answering expired and abandoned ones."""
        batch: list[_Pending] = []
        rows = 0
        now = time.perf_counter()
        while queue:
            pending = queue[0]
            if pending.future.done():  # the client went away
                queue.popleft()
                self._queued_rows -= pending.rows.shape[0]
                continue
            if pending.deadline <= now:
                queue.popleft()
                self._queued_rows -= pending.rows.shape[0]
                waited_ms = (now - pending.enqueued_at) * 1000.0
                pending.future.set_exception(
                    DeadlineExceeded(f"The request waited {waited_ms:.0f} ms for {self.name} and was not run.")
                )
                continue
            n = pending.rows.shape[0]
            # A request larger than a batch runs on its own rather than never.
            if batch and rows + n > self.max_batch_size:
                break
            queue.popleft()
            batch.append(pending)
            rows += n
        self._queued_rows -= rows
        return batch

    async def _run(self, batch: list[_Pending]) -> bool:
        """Run one batch and answer its requests; True when the model call ran on the event loop."""
        loop = asyncio.get_running_loop()
        total = sum(pending.rows.shape[0] for pending in batch)
        self.in_flight_rows = total
        started = time.perf_counter()
        inline = self.inline_calls.next_inline()
        try:
            inputs = batch[0].rows if len(batch) == 1 else np.concatenate([pending.rows for pending in batch])
            if inline:
                outputs, call_s = self._timed_call(inputs)
            else:
                outputs, call_s = await loop.run_in_executor(self.executor, self._timed_call, inputs)
            self.inline_calls.ran(inline, call_s)
            # A runtime that breaks its contract fails its batch's requests, not the worker.
            if not isinstance(outputs, np.ndarray) or outputs.ndim == 0:
                raise ModelCallFailed(f"{self.name} returned {type(outputs).__name__}, not an array of outputs.")
            if len(outputs) != total:
                raise ModelCallFailed(
                    f"{self.name} returned {len(outputs)} output rows for a batch of {total}."
                )
        except Exception as exc:
            finished = time.perf_counter()
            logger.exception("Model call for %s failed on a batch of %d rows", self.name, total)
            error = (
                exc if isinstance(exc, ModelCallFailed)
                else ModelCallFailed(f"The model {self.name} failed on this batch.")
            )
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            self._observe(total, len(batch), (finished - started) * 1000.0, failed=True, inline=inline)
            return inline
        finally:
            self.in_flight_rows = 0
        finished = time.perf_counter()
        inference_ms = (finished - started) * 1000.0
        self._batch_ms_ewma = 0.8 * self._batch_ms_ewma + 0.2 * inference_ms
        # One check for the batch spares each request its own; where it fails,
        # each request's slice is checked on its own and only the bad ones fail.
        all_finite = outputs.dtype.kind != "f" or bool(np.isfinite(outputs).all())
        offset = 0
        for pending in batch:
            n = pending.rows.shape[0]
            if not pending.future.done():
                pending.future.set_result(
                    BatchResult(
                        outputs=outputs[offset : offset + n],
                        batch_size=total,
                        queue_ms=(started - pending.enqueued_at) * 1000.0,
                        inference_ms=inference_ms,
                        all_finite=all_finite,
                    )
                )
            offset += n
        self._observe(total, len(batch), inference_ms, failed=False, inline=inline)
        return inline

    def _timed_call(self, inputs: np.ndarray) -> tuple[np.ndarray, float]:
        """The model call, and how long it took where it ran (without the hand-off to a thread)."""
        started = time.perf_counter()
        outputs = self.call(inputs)
        return outputs, time.perf_counter() - started

    def _observe(self, rows: int, requests: int, inference_ms: float, *, failed: bool, inline: bool) -> None:
        if self.on_batch is not None:
            try:
                self.on_batch(BatchStats(rows, requests, inference_ms, failed, len(self._queue), inline))
            except Exception:  # an observer must never break serving
                logger.exception("Batch observer for %s failed", self.name)
