"""The methods of ``inference.GRPCInferenceService``: health, metadata, ``ModelInfer`` and ``ModelStreamInfer``.

Every method takes its request as bytes and parses it itself, so that a
message that is not the protocol's is answered INVALID_ARGUMENT rather than
grpc's INTERNAL for a failed deserializer. Infer requests go through
:mod:`streaming.oip.infer` exactly as HTTP ones do, reported with
``protocol="grpc"``; refusals become gRPC codes (:mod:`.status`), with a
``retry-after`` in the trailing metadata where HTTP sends the header.

``ModelStreamInfer`` is Triton's stream: each request is answered as soon as
its batch has run, in whatever order they finish (a response carries its
request's id), an error in the response's ``error_message`` without ending
the stream. At most ``PLATFORM_MAX_IN_FLIGHT`` requests of one stream are in
the pool at once; past that the stream is not read until one is answered,
which holds the client back through HTTP/2 flow control.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from django.conf import settings
from google.protobuf.message import DecodeError

from inference.outcomes import Outcome
from inference.service import get_service
from monitoring.events import Protocol

from .. import metadata
from ..errors import HttpError
from ..infer import Answer, Inferences, InferRequest, client_of, entry_for
from . import messages, status, tensors

logger = logging.getLogger(__name__)

INTERNAL_ERROR = "The server failed on this request."


def _parse(cls: Any, data: bytes) -> Any:
    try:
        return cls.FromString(data)
    except (DecodeError, RuntimeError, ValueError):
        raise HttpError(400, Outcome.INVALID_REQUEST,
                        f"The message is not a valid {cls.DESCRIPTOR.full_name}.") from None


def _token(context: grpc.aio.ServicerContext) -> str | None:
    """The key of an ``authorization: Bearer <key>`` metadata entry, if any."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _version(model: str, text: str) -> int | None:
    if not text:
        return None
    if not text.isdigit():
        raise HttpError(404, Outcome.UNKNOWN_MODEL, f"There is no version {text!r} of {model!r}.")
    return int(text)


@dataclass(frozen=True, slots=True)
class _StreamReply:
    """A stream's response, and how to report it once sent (or not)."""

    message: Any
    sent: Callable[[], None]
    lost: Callable[[], None]


def _refused(request: InferRequest, outcome: str, message: str, code: grpc.StatusCode) -> _StreamReply:
    """A stream's error response: the code's name, then the sentence; the request's id where it was read."""
    error = messages.ModelStreamInferResponse(error_message=f"{code.name}: {message}")
    if request.rid is not None:
        error.infer_response.id = request.rid
        error.infer_response.model_name = request.model or ""
    return _StreamReply(error, lambda: request.report(outcome, error=message),
                        lambda: request.report_undelivered(None, f"{outcome}: {message}"))


class InferenceServicer:
    """The service's methods, on the process's inference pool and its :class:`Inferences`."""

    def __init__(self, inferences: Inferences) -> None:
        self.inferences = inferences

    # -- health and metadata --------------------------------------------------------

    async def ServerLive(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:  # noqa: N802
        return await self._answer(context, lambda: self._server_live(data))

    async def ServerReady(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:  # noqa: N802
        return await self._answer(context, lambda: self._server_ready(data))

    async def ServerMetadata(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:  # noqa: N802
        return await self._answer(context, lambda: self._server_metadata(data))

    async def ModelReady(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:  # noqa: N802
        return await self._answer(context, lambda: self._model_ready(data, _token(context)))

    async def ModelMetadata(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:  # noqa: N802
        return await self._answer(context, lambda: self._model_metadata(data, _token(context)))

    @staticmethod
    async def _answer(context: grpc.aio.ServicerContext, handler: Callable[[], Any]) -> bytes:
        try:
            reply = await handler()
        except HttpError as exc:
            await context.abort(status.code_of(exc), exc.message, status.trailing_metadata(exc))
        return reply.SerializeToString()

    @staticmethod
    async def _server_live(data: bytes) -> Any:
        _parse(messages.ServerLiveRequest, data)
        return messages.ServerLiveResponse(live=True)

    async def _server_ready(self, data: bytes) -> Any:
        _parse(messages.ServerReadyRequest, data)
        ready = get_service().loaded_at is not None and not self.inferences.draining
        return messages.ServerReadyResponse(ready=ready)

    @staticmethod
    async def _server_metadata(data: bytes) -> Any:
        _parse(messages.ServerMetadataRequest, data)
        return messages.ServerMetadataResponse(**metadata.server())

    @staticmethod
    async def _model_ready(data: bytes, token: str | None) -> Any:
        request = _parse(messages.ModelReadyRequest, data)
        client = await client_of(token)
        entry = entry_for(get_service(), client, request.name, _version(request.name, request.version))
        return messages.ModelReadyResponse(ready=entry.ready)

    @staticmethod
    async def _model_metadata(data: bytes, token: str | None) -> Any:
        request = _parse(messages.ModelMetadataRequest, data)
        service = get_service()
        client = await client_of(token)
        entry = entry_for(service, client, request.name, _version(request.name, request.version))
        versions = [e.version for e in service.entries() if e.name == request.name]
        return messages.ModelMetadataResponse(**metadata.model(entry, versions))

    # -- infer ----------------------------------------------------------------------

    async def ModelInfer(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:  # noqa: N802
        request = InferRequest(get_service(), None, None, Protocol.GRPC)
        try:
            reply, answer = await self._infer(data, _token(context), request)
        except HttpError as exc:
            request.report(exc.code, error=exc.message)
            await context.abort(status.code_of(exc), exc.message, status.trailing_metadata(exc))
        except Exception:
            logger.exception("A gRPC infer request failed")
            request.report(Outcome.INTERNAL, error=INTERNAL_ERROR)
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_ERROR)
        serialized = reply.SerializeToString()
        request.report_ok(answer)
        return serialized

    async def _infer(self, data: bytes, token: str | None, request: InferRequest) -> tuple[Any, Answer]:
        """The ``ModelInferResponse`` to one infer request, and its answer for the report."""
        message = _parse(messages.ModelInferRequest, data)
        service = get_service()
        request.model, request.rid = message.model_name, message.id or None
        request.version = _version(message.model_name, message.model_version)
        request.labels = service.labels(request.model, request.version)
        inferences = self.inferences
        entry = inferences.admit(service, await client_of(token), request)
        array, names = inferences.prepare(
            request, entry, lambda: (tensors.request_tensors(message), tensors.output_names(message)))
        answer = await inferences.run(service, request, entry, array, names)
        if answer is None:  # only with a disconnect watch, which gRPC does not use: its cancellation does it
            raise asyncio.CancelledError
        return tensors.response(answer, message.id), answer

    async def ModelStreamInfer(self, requests: AsyncIterator[bytes],  # noqa: N802
                               context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        token = _token(context)
        replies: asyncio.Queue[_StreamReply | None] = asyncio.Queue()
        reader = asyncio.ensure_future(self._read_stream(requests, token, replies))
        try:
            while (reply := await replies.get()) is not None:
                try:
                    yield reply.message.SerializeToString()
                except BaseException:
                    reply.lost()
                    raise
                reply.sent()
        finally:
            reader.cancel()
            while not replies.empty():
                if (left := replies.get_nowait()) is not None:
                    left.lost()

    async def _read_stream(self, requests: AsyncIterator[bytes], token: str | None,
                           replies: asyncio.Queue[_StreamReply | None]) -> None:
        """Start each request of the stream as it arrives; None on ``replies`` once every one is answered."""
        slots = asyncio.Semaphore(settings.PLATFORM_MAX_IN_FLIGHT)
        tasks: set[asyncio.Task[None]] = set()
        try:
            async for data in requests:
                await slots.acquire()
                task = asyncio.ensure_future(self._stream_one(data, token, replies))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(lambda _: slots.release())
            if tasks:
                await asyncio.wait(list(tasks))
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            raise
        except Exception:  # the client's half closed badly: what was accepted is still answered
            logger.info("A gRPC stream's requests ended with an error", exc_info=True)
            if tasks:
                await asyncio.wait(list(tasks))
        replies.put_nowait(None)

    async def _stream_one(self, data: bytes, token: str | None, replies: asyncio.Queue[_StreamReply | None]) -> None:
        """Answer one request of a stream: its response, or its error, goes on ``replies``."""
        request = InferRequest(get_service(), None, None, Protocol.GRPC)
        try:
            reply, answer = await self._infer(data, token, request)
        except HttpError as exc:
            replies.put_nowait(_refused(request, exc.code, exc.message, status.code_of(exc)))
            return
        except Exception:
            logger.exception("A gRPC stream's infer request failed")
            replies.put_nowait(_refused(request, Outcome.INTERNAL, INTERNAL_ERROR, grpc.StatusCode.INTERNAL))
            return
        replies.put_nowait(_StreamReply(messages.ModelStreamInferResponse(infer_response=reply),
                                        lambda: request.report_ok(answer),
                                        lambda: request.report_undelivered(answer, "a prediction")))


def method_handlers(servicer: InferenceServicer) -> grpc.GenericRpcHandler:
    """The service's handlers, each taking its request as bytes and answering bytes."""
    unary = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer")
    handlers = {name: grpc.unary_unary_rpc_method_handler(getattr(servicer, name)) for name in unary}
    handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(servicer.ModelStreamInfer)
    if set(handlers) != set(messages.METHODS):
        raise RuntimeError(f"inference.proto's methods {sorted(messages.METHODS)} are not those served.")
    return grpc.method_handlers_generic_handler(messages.SERVICE_NAME, handlers)
