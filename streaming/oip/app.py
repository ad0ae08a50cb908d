"""The ASGI application in front of Django's: ``/v2`` is the Open Inference Protocol, the rest goes on to Django.

Requests under ``/v2`` never enter Django's request machinery: no
middleware, no thread hop. An ``infer`` request takes the WebSocket stream's
path to the pool (``InferenceService.entry``, the schema's ``to_array``,
``submit``), so both protocols share one batcher, queue and deadline per
model version, the same keys and per-key rate limits, and each request is
reported once, as a ``PredictionEvent`` with ``protocol="http"``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from django.conf import settings

from inference.exceptions import InferenceError, InvalidInput, ModelCallFailed, Overloaded
from inference.outcomes import Outcome
from inference.served import ServedVersion
from inference.service import InferenceService, get_service
from monitoring import events
from monitoring.events import PredictionEvent

from .. import replies
from ..auth import ANONYMOUS, Client, bearer_token, rate_limits
from . import codec, metadata
from .errors import HttpError, status_of
from .keys import key_cache

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PREFIX = "/v2"
PROTOCOL = "http"
#: Why a response never reached the client, as the prediction log keeps it.
NOT_DELIVERED = "Not delivered: the connection had closed before the response could be sent."


def _json_response_headers(length: int, extra: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"content-length", str(length).encode()), *extra]


async def respond(send: Send, status: int, body: dict[str, Any], headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body, separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": _json_response_headers(len(data), list(headers))})
    await send({"type": "http.response.body", "body": data})


async def read_body(scope: Scope, receive: Receive, limit_bytes: int) -> bytes | None:
    """The request body, read as it arrives; raises ``HttpError`` 413 at the limit, None if the client left."""
    too_big = HttpError(413, Outcome.INVALID_REQUEST,
                        f"The request body is larger than the limit of {limit_bytes} bytes.")
    for name, value in scope.get("headers", ()):
        if name == b"content-length" and value.isdigit() and int(value) > limit_bytes:
            raise too_big
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit_bytes:
            raise too_big  # stop here: the rest is never read into memory
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _delivered(send: Send, status: int, body: dict[str, Any],
                     headers: Sequence[tuple[bytes, bytes]] = ()) -> bool:
    """Send a response; False when it could not be (the client had gone)."""
    try:
        await respond(send, status, body, headers)
    except Exception:  # the server's error for a closed connection: nothing to answer
        logger.info("Could not send an infer response (%d): the connection had closed", status)
        return False
    return True


class OpenInferenceApp:
    """``/v2`` and below; anything else is handed to ``fallback`` (Django's HTTP application)."""

    def __init__(self, fallback: ASGIApp) -> None:
        self.fallback = fallback
        #: Set when the server begins to shut down: ready answers 503 from then on.
        self.draining = False
        self._in_flight: set[asyncio.Future[Any]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.fallback(scope, receive, send)
            return
        try:
            await self._route(scope, receive, send, path[len(PREFIX):].strip("/").split("/"))
        except HttpError as exc:
            await respond(send, exc.status, {"error": exc.message}, exc.headers())

    async def drain(self, timeout_s: float | None = None) -> None:
        """Shutdown hook: report not ready, and let the requests in flight be answered (within ``timeout_s``)."""
        self.draining = True
        if timeout_s is None:
            timeout_s = settings.PLATFORM_REQUEST_TIMEOUT_MS / 1000.0 + 1.0
        if self._in_flight:
            await asyncio.wait(list(self._in_flight), timeout=timeout_s)

    # -- routing --------------------------------------------------------------------

    async def _route(self, scope: Scope, receive: Receive, send: Send, parts: list[str]) -> None:
        method = scope.get("method", "GET")
        service = get_service()
        if parts == [""]:
            self._expect(method, "GET")
            await respond(send, 200, metadata.server())
            return
        if parts[0] == "health" and len(parts) == 2 and parts[1] in ("live", "ready"):
            self._expect(method, "GET")
            ready = parts[1] == "live" or (service.loaded_at is not None and not self.draining)
            await respond(send, 200 if ready else 503, {"live": True} if parts[1] == "live" else {"ready": ready})
            return
        if parts[0] != "models" or len(parts) < 2:
            raise HttpError(404, Outcome.INVALID_REQUEST, f"There is no endpoint {scope.get('path')!r}.")
        model, rest = parts[1], parts[2:]
        version: int | None = None
        if rest[:1] == ["versions"]:
            if len(rest) < 2 or not rest[1].isdigit():
                raise HttpError(404, Outcome.UNKNOWN_MODEL, f"There is no version {rest[1:2]} of {model!r}.")
            version, rest = int(rest[1]), rest[2:]
        if rest == ["infer"]:
            self._expect(method, "POST")
            await self._infer(scope, receive, send, service, model, version)
        elif rest in ([], ["ready"]):
            self._expect(method, "GET")
            client = await self._client(scope)
            entry = self._entry(service, client, model, version)
            if rest:
                await respond(send, 200, {"name": model, "ready": entry.ready})
            else:
                versions = [e.version for e in service.entries() if e.name == model]
                await respond(send, 200, metadata.model(entry, versions))
        else:
            raise HttpError(404, Outcome.INVALID_REQUEST, f"There is no endpoint {scope.get('path')!r}.")

    @staticmethod
    def _expect(method: str, allowed: str) -> None:
        if method != allowed and not (allowed == "GET" and method == "HEAD"):
            raise HttpError(405, Outcome.INVALID_REQUEST, f"Use {allowed} here, not {method}.",
                            headers=[(b"allow", allowed.encode())])

    @staticmethod
    async def _client(scope: Scope) -> Client:
        if not settings.PLATFORM_REQUIRE_API_KEY:
            return ANONYMOUS
        token = bearer_token(scope)
        if token is None:
            raise HttpError(401, Outcome.INVALID_REQUEST, "Send an API key: Authorization: Bearer <key>.",
                            headers=[(b"www-authenticate", b"Bearer")])
        client = await key_cache.client(token)
        if client is None:
            raise HttpError(401, Outcome.INVALID_REQUEST, "This API key is not valid, or was revoked.",
                            headers=[(b"www-authenticate", b"Bearer")])
        return client

    @staticmethod
    def _entry(service: InferenceService, client: Client, model: str, version: int | None) -> ServedVersion:
        if not service.has_model(model):
            raise HttpError(404, Outcome.UNKNOWN_MODEL, f"There is no model named {model!r}.")
        if client.models is not None and model not in client.models:
            raise HttpError(403, Outcome.UNKNOWN_MODEL, f"This API key may not use the model {model!r}.")
        try:
            return service.entry(model, version, client.models)
        except InferenceError as exc:
            raise HttpError(status_of(exc), exc.code, str(exc)) from None

    # -- infer ----------------------------------------------------------------------

    async def _infer(self, scope: Scope, receive: Receive, send: Send, service: InferenceService, model: str,
                     version: int | None) -> None:
        received, received_wall = time.perf_counter(), time.time()
        request = _InferRequest(model, version, service.labels(model, version), received, received_wall)
        try:
            await self._serve(scope, receive, send, service, request)
        except HttpError as exc:
            if await _delivered(send, exc.status, {"error": exc.message}, exc.headers()):
                request.report(exc.code, error=exc.message)
            else:
                request.report(Outcome.NOT_DELIVERED, error=f"{NOT_DELIVERED} The reply was {exc.code}: {exc.message}")
        except Exception:
            logger.exception("An infer request to %s failed", model)
            message = "The server failed on this request."
            delivered = await _delivered(send, 500, {"error": message})
            request.report(Outcome.INTERNAL if delivered else Outcome.NOT_DELIVERED, error=message)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, service: InferenceService,
                     request: _InferRequest) -> None:
        client = await self._client(scope)
        request.api_key = client.name
        entry = request.entry = self._entry(service, client, request.model, request.version)
        request.labels = entry.labels
        wait_ms = rate_limits.take(client)
        if wait_ms:
            raise HttpError(429, Outcome.RATE_LIMITED,
                            f"This key may send {client.rate_limit_per_s:g} requests per second.",
                            retry_after_s=math.ceil(wait_ms / 1000.0))
        raw = await read_body(scope, receive, settings.PLATFORM_MAX_FRAME_BYTES)
        if raw is None:
            request.report(Outcome.NOT_DELIVERED, error="Not delivered: the client left before sending its body.")
            return
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            raise HttpError(400, Outcome.INVALID_JSON, "The request body is not valid JSON.") from None
        if type(body) is not dict:
            raise HttpError(400, Outcome.INVALID_REQUEST, "The request body must be a JSON object.")
        request.rid = body.get("id")
        try:
            rows = codec.rows(body.get("inputs"), entry.schema.features)
            request.inputs, request.n_rows = rows, len(rows)
            names = codec.requested_outputs(body, entry)
            array = entry.schema.to_array(rows, max_rows=settings.PLATFORM_MAX_ROWS)
        except codec.TensorError as exc:
            raise HttpError(400, Outcome.INVALID_INPUT, str(exc)) from None
        except InvalidInput as exc:
            raise HttpError(400, exc.code, str(exc)) from None
        try:
            future = service.submit(entry, array, received_at=request.received)
        except Overloaded as exc:
            raise HttpError(503, exc.code, str(exc), retry_after_s=math.ceil(exc.retry_after_ms / 1000.0)) from None
        except InferenceError as exc:
            raise HttpError(status_of(exc), exc.code, str(exc)) from None
        self._in_flight.add(future)
        events.in_flight_change(+1)
        try:
            result = await future
            outputs = replies.output_rows(entry, result.outputs, known_finite=result.all_finite)
        except InferenceError as exc:
            raise HttpError(status_of(exc), exc.code, str(exc)) from None
        except Exception as exc:
            logger.error("Request %r to %s v%s failed", request.rid, entry.name, entry.version, exc_info=exc)
            failed = ModelCallFailed(f"The model {entry.name} failed on this request.")
            raise HttpError(500, failed.code, str(failed)) from None
        finally:
            self._in_flight.discard(future)
            events.in_flight_change(-1)
        total_ms = (time.perf_counter() - request.received) * 1000.0
        reply: dict[str, Any] = {"model_name": entry.name, "model_version": str(entry.version)}
        if request.rid is not None:
            reply["id"] = request.rid
        reply["parameters"] = {"batch_size": result.batch_size}
        reply["outputs"] = codec.output_tensors(entry, result.outputs, names)
        if not await _delivered(send, 200, reply):
            request.report(Outcome.NOT_DELIVERED, outputs=outputs, error=f"{NOT_DELIVERED} The reply was a prediction.",
                           total_ms=total_ms, batch_size=result.batch_size)
            return
        request.report(Outcome.OK, outputs=outputs, queue_ms=result.queue_ms, inference_ms=result.inference_ms,
                       total_ms=total_ms, batch_size=result.batch_size)


class _InferRequest:
    """What an infer request's report needs, filled in as the request is read."""

    __slots__ = ("api_key", "entry", "inputs", "labels", "model", "n_rows", "received", "received_wall", "rid",
                 "version")

    def __init__(self, model: str, version: int | None, labels: tuple[str, str], received: float,
                 received_wall: float) -> None:
        self.model = model
        self.version = version
        self.labels = labels
        self.received = received
        self.received_wall = received_wall
        self.api_key: str | None = None
        self.entry: ServedVersion | None = None
        self.rid: Any = None
        self.inputs: Any = None
        self.n_rows = 0

    def report(self, outcome: str, *, outputs: Any = None, error: str | None = None, **timings: Any) -> None:
        """Emit the request's one ``PredictionEvent``."""
        entry = self.entry
        timings.setdefault("total_ms", (time.perf_counter() - self.received) * 1000.0)
        events.prediction(PredictionEvent(
            received_at=self.received_wall,
            model=entry.name if entry is not None else self.model,
            version=entry.version if entry is not None else self.version,
            api_key=self.api_key, request_id=self.rid, rows=self.n_rows, inputs=self.inputs, outputs=outputs,
            outcome=outcome, error=error, labels=self.labels, protocol=PROTOCOL, **timings,
        ))
