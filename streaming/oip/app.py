"""The ASGI application in front of Django's: ``/v2`` is the Open Inference Protocol, the rest goes on to Django.

Requests under ``/v2`` never enter Django's request machinery: no
middleware, no thread hop. An ``infer`` request goes through
:mod:`streaming.oip.infer`, the path the gRPC service takes too: the same
batchers as the WebSocket stream, the same keys and rate limits, and one
``PredictionEvent`` per request, with ``protocol="http"``. A client that
disconnects while its request is queued has it dropped, not run; while the
server drains, infer is refused with 503 and requests already accepted are
answered.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import orjson
from django.conf import settings

from inference.outcomes import Outcome
from inference.service import InferenceService, get_service
from monitoring.events import Protocol

from ..auth import bearer_token
from ..transport import disconnect_watch
from . import binary, codec, metadata
from .errors import HttpError
from .infer import Answer, Inferences, InferRequest, client_of, entry_for

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PREFIX = "/v2"


def _json_response_headers(length: int, extra: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"content-length", str(length).encode()), *extra]


async def respond(send: Send, status: int, body: dict[str, Any], headers: Sequence[tuple[bytes, bytes]] = (),
                  binary: Sequence[bytes] = ()) -> None:
    """Send ``body`` as JSON, followed by ``binary`` tensor data (the binary data extension) when there is some."""
    data = _json_bytes(body)
    if binary:
        json_length = len(data)
        data = b"".join((data, *binary))
        headers = [(b"content-type", b"application/octet-stream"), (b"content-length", str(len(data)).encode()),
                   (b"inference-header-content-length", str(json_length).encode()), *headers]
    else:
        headers = _json_response_headers(len(data), list(headers))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def _json_bytes(body: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError:  # what only the standard encoder writes: a lone surrogate in an echoed id
        return json.dumps(body, separators=(",", ":")).encode()


def _parse_json(text: bytes) -> Any:
    """The body's JSON document; ``NaN`` and ``Infinity`` read as numbers, to be refused as non-finite input."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)  # what orjson refuses: those literals, integers past 64 bits


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
                     headers: Sequence[tuple[bytes, bytes]] = (), binary: Sequence[bytes] = ()) -> bool:
    """Send a response; False when it could not be (the client had gone)."""
    try:
        await respond(send, status, body, headers, binary)
    except Exception:  # the server's error for a closed connection: nothing to answer
        logger.info("Could not send an infer response (%d): the connection had closed", status)
        return False
    return True


class OpenInferenceApp:
    """``/v2`` and below; anything else is handed to ``fallback`` (Django's HTTP application)."""

    def __init__(self, fallback: ASGIApp, inferences: Inferences | None = None) -> None:
        self.fallback = fallback
        #: The infer requests in flight and the drain, shared with the gRPC service where the server runs one.
        self.inferences = inferences if inferences is not None else Inferences()

    @property
    def draining(self) -> bool:
        return self.inferences.draining

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
        """Shutdown hook: report not ready, refuse new infer requests, answer those in flight (within ``timeout_s``)."""
        await self.inferences.drain(timeout_s)

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
            client = await client_of(bearer_token(scope))
            entry = entry_for(service, client, model, version)
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

    # -- infer ----------------------------------------------------------------------

    async def _infer(self, scope: Scope, receive: Receive, send: Send, service: InferenceService, model: str,
                     version: int | None) -> None:
        request = InferRequest(service, model, version, Protocol.HTTP)
        try:
            served = await self._serve(scope, receive, service, request)
        except HttpError as exc:
            if await _delivered(send, exc.status, {"error": exc.message}, exc.headers()):
                request.report(exc.code, error=exc.message)
            else:
                request.report_undelivered(None, f"{exc.code}: {exc.message}")
            return
        except Exception:
            logger.exception("An infer request to %s failed", model)
            message = "The server failed on this request."
            delivered = await _delivered(send, 500, {"error": message})
            request.report(Outcome.INTERNAL if delivered else Outcome.NOT_DELIVERED, error=message)
            return
        if served is None:
            return  # the client left: reported, nothing to send
        answer, binary_names = served
        entry = answer.entry
        reply: dict[str, Any] = {"model_name": entry.name, "model_version": str(entry.version)}
        if request.rid is not None:
            reply["id"] = request.rid
        reply["parameters"] = {"batch_size": answer.result.batch_size}
        reply["outputs"] = outputs = codec.output_tensors(entry, answer.result.outputs, answer.names)
        chunks = binary.move_to_binary(outputs, binary_names) if binary_names else []
        if await _delivered(send, 200, reply, binary=chunks):
            request.report_ok(answer)
        else:
            request.report_undelivered(answer, "a prediction")

    async def _serve(self, scope: Scope, receive: Receive, service: InferenceService,
                     request: InferRequest) -> tuple[Answer, frozenset[str]] | None:
        """The request's answer and the outputs it wants as binary data; None when its client left."""
        inferences = self.inferences
        entry = inferences.admit(service, await client_of(bearer_token(scope)), request)
        raw = await read_body(scope, receive, settings.PLATFORM_MAX_FRAME_BYTES)
        if raw is None:
            request.report(Outcome.NOT_DELIVERED, error="Not delivered: the client left before sending its body.")
            return None
        try:
            json_length = binary.header_length(scope.get("headers", ()), len(raw))
        except codec.TensorError as exc:
            raise HttpError(400, Outcome.INVALID_REQUEST, str(exc)) from None
        text, tail = (raw, b"") if json_length is None else (raw[:json_length], raw[json_length:])
        try:
            body = _parse_json(text)
        except (ValueError, RecursionError):
            raise HttpError(400, Outcome.INVALID_JSON, "The request body is not valid JSON.") from None
        if type(body) is not dict:
            raise HttpError(400, Outcome.INVALID_REQUEST, "The request body must be a JSON object.")
        request.rid = body.get("id")

        def read() -> tuple[list[codec.Tensor], list[Any] | None]:
            if json_length is not None:
                binary.read_binary_inputs(body.get("inputs"), tail)
            return codec.json_tensors(body.get("inputs")), codec.json_output_names(body)

        array, names = inferences.prepare(request, entry, read)
        # Once the body is read, the next message is the client's disconnect; the platform's
        # own HTTP server also offers to call back instead, which spares a task per request.
        watch = disconnect_watch(scope)
        answer = await inferences.run(service, request, entry, array, names, watch=watch,
                                      gone=None if watch else lambda: _disconnected(receive))
        return None if answer is None else (answer, binary.binary_outputs(body, names))


async def _disconnected(receive: Receive) -> None:
    """Return once the client has disconnected; called once all of its body was read."""
    if (await receive())["type"] != "http.disconnect":
        # Nothing else may come after the body (ASGI); from a server that sends more, there is no disconnect to see.
        await asyncio.get_running_loop().create_future()
