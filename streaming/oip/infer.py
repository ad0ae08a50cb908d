"""An infer request of the Open Inference Protocol, over HTTP or gRPC: admitted, read, run, reported once.

Both transports take the WebSocket stream's path to the pool
(``InferenceService.entry``, the schema's ``to_array``, ``submit``), so all
three share one batcher, queue and deadline per model version, the same keys
and per-key rate limits. A transport reads its request into
:class:`~streaming.oip.codec.Tensor` objects, hands them to
:meth:`Inferences.prepare` and :meth:`Inferences.run`, and reports what its
client got with :meth:`InferRequest.report`: one ``PredictionEvent`` per
request, with its ``protocol``. Refusals are :class:`HttpError`; each
transport says them in its own words (an HTTP status, a gRPC code).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.conf import settings

from inference.batching import BatchResult
from inference.exceptions import InferenceError, InvalidInput, ModelCallFailed, Overloaded
from inference.outcomes import Outcome
from inference.served import ServedVersion
from inference.service import InferenceService
from monitoring import events
from monitoring.events import PredictionEvent

from .. import replies, reports
from ..auth import ANONYMOUS, Client, rate_limits
from ..transport import DisconnectWatch
from . import codec
from .errors import HttpError, status_of
from .keys import key_cache

logger = logging.getLogger(__name__)

#: Why a response never reached the client, as the prediction log keeps it.
NOT_DELIVERED = "Not delivered: the connection had closed before the response could be sent."
#: What a request that arrives while the server drains is told; it may go to another instance at once.
SHUTTING_DOWN = "The server is shutting down: send this request to another instance."

#: A transport's reading of its request: the input tensors and the output names asked for (None: all).
Reader = Callable[[], tuple[list[codec.Tensor], list[Any] | None]]


class InferRequest:
    """What an infer request's report needs, filled in as the request is read."""

    __slots__ = ("api_key", "entry", "inputs", "labels", "model", "n_rows", "protocol", "received", "received_wall",
                 "rid", "version")

    def __init__(self, service: InferenceService, model: str | None, version: int | None, protocol: str) -> None:
        self.received, self.received_wall = time.perf_counter(), time.time()
        self.model = model
        self.version = version
        self.protocol = protocol
        self.labels = service.labels(model, version)
        self.api_key: str | None = None
        self.entry: ServedVersion | None = None
        self.rid: Any = None
        self.inputs: Any = None
        self.n_rows = 0

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.received) * 1000.0

    def report(self, outcome: str, *, outputs: Any = None, error: str | None = None, **timings: Any) -> None:
        """Emit the request's one ``PredictionEvent``."""
        entry = self.entry
        timings.setdefault("total_ms", self.elapsed_ms())
        events.prediction(PredictionEvent(
            received_at=self.received_wall,
            model=entry.name if entry is not None else self.model,
            version=entry.version if entry is not None else self.version,
            api_key=self.api_key, request_id=self.rid, rows=self.n_rows, inputs=self.inputs, outputs=outputs,
            outcome=outcome, error=error, labels=self.labels, protocol=self.protocol, **timings,
        ))

    def report_undelivered(self, answer: Answer | None, what: str) -> None:
        """Report a response that could not be sent; ``what`` it was (a prediction, or an error)."""
        if answer is None:
            self.report(Outcome.NOT_DELIVERED, error=f"{NOT_DELIVERED} The reply was {what}.")
        else:
            self.report(Outcome.NOT_DELIVERED, outputs=answer.outputs, error=f"{NOT_DELIVERED} The reply was {what}.",
                        total_ms=answer.total_ms, batch_size=answer.result.batch_size)

    def report_ok(self, answer: Answer) -> None:
        result = answer.result
        self.report(Outcome.OK, outputs=answer.outputs, queue_ms=result.queue_ms, inference_ms=result.inference_ms,
                    total_ms=answer.total_ms, batch_size=result.batch_size)


@dataclass(frozen=True, slots=True)
class Answer:
    """A request's share of a batch: the outputs to send, and the rows the log keeps."""

    entry: ServedVersion
    result: BatchResult
    #: The output names the request asked for, in its order.
    names: tuple[str, ...]
    #: The outputs as the prediction log keeps them (one dict per row).
    outputs: list[dict[str, Any]]
    total_ms: float


async def client_of(token: str | None) -> Client:
    """Who sent a request with ``token`` (the Bearer key, or None); raises ``HttpError`` 401."""
    if not settings.PLATFORM_REQUIRE_API_KEY:
        return ANONYMOUS
    challenge = [(b"www-authenticate", b"Bearer")]
    if token is None:
        raise HttpError(401, Outcome.INVALID_REQUEST, "Send an API key: Authorization: Bearer <key>.",
                        headers=challenge)
    client = await key_cache.client(token)
    if client is None:
        raise HttpError(401, Outcome.INVALID_REQUEST, "This API key is not valid, or was revoked.", headers=challenge)
    return client


def entry_for(service: InferenceService, client: Client, model: str, version: int | None) -> ServedVersion:
    """The version serving ``model`` for ``client``; raises ``HttpError`` 404, 403 or 503."""
    if not service.has_model(model):
        raise HttpError(404, Outcome.UNKNOWN_MODEL, f"There is no model named {model!r}.")
    if client.models is not None and model not in client.models:
        raise HttpError(403, Outcome.UNKNOWN_MODEL, f"This API key may not use the model {model!r}.")
    try:
        return service.entry(model, version, client.models)
    except InferenceError as exc:
        raise HttpError(status_of(exc), exc.code, str(exc)) from None


class Inferences:
    """The infer requests of one process, whichever transport they came by, and their drain at shutdown."""

    def __init__(self) -> None:
        #: Set when the server begins to shut down: new requests are refused, readiness turns false.
        self.draining = False
        self._in_flight: set[asyncio.Future[Any]] = set()

    def admit(self, service: InferenceService, client: Client, request: InferRequest) -> ServedVersion:
        """Check the request may run now: not draining, a model the key may use, within the key's rate."""
        if self.draining:
            raise HttpError(503, Outcome.OVERLOADED, SHUTTING_DOWN, retry_after_s=1, shutting_down=True)
        request.api_key = client.name
        entry = request.entry = entry_for(service, client, request.model or "", request.version)
        request.labels = entry.labels
        wait_ms = rate_limits.take(client)
        if wait_ms:
            raise HttpError(429, Outcome.RATE_LIMITED,
                            f"This key may send {client.rate_limit_per_s:g} requests per second.",
                            retry_after_s=math.ceil(wait_ms / 1000.0))
        return entry

    @staticmethod
    def prepare(request: InferRequest, entry: ServedVersion, read: Reader) -> tuple[np.ndarray, tuple[str, ...]]:
        """The request's rows as one array for the model, and the outputs it asked for; raises ``HttpError`` 400."""
        try:
            tensors, asked = read()
            rows = codec.rows(tensors, entry.schema.features)
            request.inputs, request.n_rows = rows, len(rows)
            names = codec.requested_outputs(asked, entry)
            array = entry.schema.to_array(rows, max_rows=settings.PLATFORM_MAX_ROWS)
        except codec.TensorError as exc:
            raise HttpError(400, Outcome.INVALID_INPUT, str(exc)) from None
        except InvalidInput as exc:
            raise HttpError(400, exc.code, str(exc)) from None
        return array, names

    async def run(self, service: InferenceService, request: InferRequest, entry: ServedVersion, array: np.ndarray,
                  names: tuple[str, ...], *, gone: Callable[[], Awaitable[Any]] | None = None,
                  watch: DisconnectWatch | None = None) -> Answer | None:
        """Run the rows in the model's batcher; None (reported) when the client left before its batch ran.

        ``gone()`` completes when the client disconnects, or ``watch(callback)``
        calls ``callback`` then (and returns what stops the watch; cheaper: no
        task per request); a request still queued then is dropped, not run,
        as the WebSocket stream drops a closed connection's requests. A
        transport whose handler is cancelled when its client leaves (gRPC)
        needs neither: the cancellation does it.
        """
        # A canary answers its share of the requests naming no version (inference.rollout.routing).
        entry, key = service.route(entry, array, pinned=request.version is not None, request_id=request.rid)
        request.entry, request.labels = entry, entry.labels
        try:
            future = service.submit(entry, array, received_at=request.received, key=key)
        except Overloaded as exc:
            raise HttpError(503, exc.code, str(exc), retry_after_s=math.ceil(exc.retry_after_ms / 1000.0)) from None
        except InferenceError as exc:
            raise HttpError(status_of(exc), exc.code, str(exc)) from None
        self._in_flight.add(future)
        events.in_flight_change(+1)
        left: list[bool] = []  # non-empty once the client is known to have left

        def client_left() -> None:
            left.append(True)
            future.cancel()

        watcher = unwatch = None
        if watch is not None:
            unwatch = watch(client_left)
        elif gone is not None:
            # A done callback rather than asyncio.wait(): half the cost on a request's path.
            watcher = asyncio.ensure_future(gone())
            watcher.add_done_callback(lambda done: None if done.cancelled() else client_left())
        try:
            result = await future
            outputs = replies.output_rows(entry, result.outputs, known_finite=result.all_finite)
        except asyncio.CancelledError:
            if left:
                request.report(Outcome.NOT_DELIVERED, error=reports.LEFT_BEFORE_RUN)  # dropped, not run
                return None
            if future.cancel():
                request.report(Outcome.NOT_DELIVERED, error=reports.LEFT_BEFORE_RUN)
            else:
                request.report_undelivered(None, "an answer from the model")
            raise
        except InferenceError as exc:
            raise HttpError(status_of(exc), exc.code, str(exc)) from None
        except Exception as exc:
            logger.error("Request %r to %s v%s failed", request.rid, entry.name, entry.version, exc_info=exc)
            failed = ModelCallFailed(f"The model {entry.name} failed on this request.")
            raise HttpError(500, failed.code, str(failed)) from None
        finally:
            if watcher is not None:
                watcher.cancel()
            if unwatch is not None:
                unwatch()
            self._in_flight.discard(future)
            events.in_flight_change(-1)
        return Answer(entry, result, names, outputs, request.elapsed_ms())

    async def drain(self, timeout_s: float | None = None) -> None:
        """Refuse new requests from now on; let those in flight be answered (within ``timeout_s``)."""
        self.draining = True
        if timeout_s is None:
            timeout_s = settings.PLATFORM_REQUEST_TIMEOUT_MS / 1000.0 + 1.0
        if self._in_flight:
            await asyncio.wait(list(self._in_flight), timeout=timeout_s)

    def __len__(self) -> int:
        """How many requests are in a batcher now."""
        return len(self._in_flight)


#: The process's requests, for the transports the server runs (``platform_core.asgi``, the gRPC port).
inferences = Inferences()
