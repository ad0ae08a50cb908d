"""The prediction stream: parse, check, hand to the inference pool, reply.

Requests are pipelined: an accepted predict frame is queued for its model's
batch and the consumer goes on reading frames while models compute. When the
batch has run, the request's future calls back, and the callback encodes and
sends the reply at once through the platform server's ``platform.send_frame``
extension (under another server, a task awaits ASGI ``send``). Replies go out
in the order they finish.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from inference.exceptions import InferenceError, ModelCallFailed, Overloaded
from inference.outcomes import Outcome
from inference.served import ServedVersion
from inference.service import InferenceService, get_service
from monitoring import events

from . import protocol, replies, reports
from .auth import ANONYMOUS, Client, authenticate, bearer_token, rate_limits
from .draining import Drain, live_consumers
from .keywatch import key_watch
from .protocol import ProtocolError
from .transport import DirectReadLoop, frame_sender

logger = logging.getLogger(__name__)

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_UNAUTHORIZED = 4401
CLOSE_NO_MODEL = 4404

# A client that keeps sending this many times its rate (and at least this
# many frames) in one second after being told to slow down is cut off.
FLOOD_FACTOR = 10
FLOOD_MINIMUM = 100

# How long a closing connection waits for the client's half of the closing handshake.
CLOSE_HANDSHAKE_S = 2.0
# What a frame that arrives while the server shuts down is told: come back in
# this long, on a new connection (to another server, or this one restarted).
SHUTDOWN_RETRY_AFTER_MS = 1000
# How often a draining connection looks whether the frames received before the drain were read.
DRAIN_POLL_S = 0.005


@dataclass(slots=True)
class _Request:
    """What the reply to an accepted predict frame and its log record need."""

    entry: ServedVersion
    rid: Any
    inputs: Any
    n_rows: int
    binary: bool
    received: float
    received_wall: float
    #: The frame as received (text or bytes), for the prediction log.
    frame: str | bytes


class PredictConsumer(DirectReadLoop, AsyncWebsocketConsumer):
    """``/ws/v1/predict/`` and ``/ws/v1/predict/<model>/``."""

    client: Client | None
    service: InferenceService

    async def connect(self) -> None:
        """Called when a WebSocket handshake arrives (the Origin was already checked)."""
        self.service = get_service()
        self.client = None
        self.default_model: str | None = self.scope["url_route"]["kwargs"].get("model")
        #: Futures of requests waiting for their batch, and replies being sent.
        self.in_flight: set[asyncio.Future[Any]] = set()
        self._send_frame = frame_sender(self.scope)
        self._frames_seen = 0
        self._closed = asyncio.Event()
        #: The close code once this side decided to close: replies after it cannot be delivered.
        self._closing: int | None = None
        #: At shutdown: frames up to ``_serve_through`` are served, later ones refused.
        self.draining = False
        self._serve_through = 0
        self._auth_timer: asyncio.TimerHandle | None = None
        self._flood_window = self._flood_count = 0
        self._flooded = False
        self.max_in_flight = settings.PLATFORM_MAX_IN_FLIGHT
        self.max_rows = settings.PLATFORM_MAX_ROWS
        self.max_frame_bytes = settings.PLATFORM_MAX_FRAME_BYTES
        await self.accept()
        if Drain.started:  # the server is going away: connect again, to another process or host
            return await self.close(CLOSE_GOING_AWAY)
        live_consumers.add(self)
        events.connection_change(+1)
        self._counted = True

        if not settings.PLATFORM_REQUIRE_API_KEY:
            await self._authenticated(ANONYMOUS)
            return
        token = bearer_token(self.scope)
        if token is not None:
            client = await authenticate(token)
            if client is None:
                await self.close(CLOSE_UNAUTHORIZED)
                return
            await self._authenticated(client)
            return
        # Browsers cannot set headers: wait for an `auth` message, but not forever.
        loop = asyncio.get_running_loop()
        self._auth_timer = loop.call_later(settings.PLATFORM_AUTH_TIMEOUT_S, self._auth_timed_out)

    def _auth_timed_out(self) -> None:
        if self.client is None:
            asyncio.ensure_future(self.close(CLOSE_UNAUTHORIZED))

    async def _authenticated(self, client: Client) -> None:
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        if self.default_model is not None and not self._may_use(client, self.default_model):
            await self.close(CLOSE_NO_MODEL)
            return
        self.client = client
        if client.key_id is not None:
            key_watch.watch(client.key_id, self, self._key_revoked)
        await self._send_message(
            {
                "type": "ready",
                "protocol": protocol.PROTOCOL_VERSION,
                "max_in_flight": self.max_in_flight,
                "max_rows": self.max_rows,
                "models": self.service.catalog(client.models),
            },
            binary=False,
        )

    async def _key_revoked(self) -> None:
        """Called by the key watch when this connection's key was revoked or expired."""
        await self.close(CLOSE_UNAUTHORIZED)

    async def close(self, code: int | None = None, reason: str | None = None) -> None:
        """Close from this side; a reply that would follow the close frame is reported not delivered."""
        if self._closing is None:
            self._closing = code or 1000
        await super().close(code, reason)

    def deliverable(self) -> bool:
        """Whether a reply sent now can still reach the client."""
        return self._closing is None and not self._closed.is_set()

    async def _close_when_answered(self, code: int, timeout_s: float) -> None:
        """Answer every request accepted so far (within ``timeout_s``), then close with ``code``."""
        deadline = time.monotonic() + timeout_s
        while self.in_flight and (left := deadline - time.monotonic()) > 0:
            await asyncio.wait(list(self.in_flight), timeout=left)
        if self.in_flight:
            logger.warning("Closing a connection (%d) with %d requests still in flight", code, len(self.in_flight))
        await self.close(code)

    def _may_use(self, client: Client, model: str) -> bool:
        return self.service.has_model(model) and (client.models is None or model in client.models)

    async def disconnect(self, code: int) -> None:
        """Called when the socket closes, from either side."""
        self._closed.set()
        if self._auth_timer is not None:
            self._auth_timer.cancel()
        # The client is gone: its queued requests are dropped, not run.
        for task in list(self.in_flight):
            task.cancel()
        live_consumers.discard(self)
        client = getattr(self, "client", None)
        if client is not None and client.key_id is not None:
            key_watch.forget(client.key_id, self)
        if getattr(self, "_counted", False):
            self._counted = False
            events.connection_change(-1)

    # -- frames ---------------------------------------------------------------------

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Called for every ASGI message this connection receives.

        Channels closes stale database connections before every handler, a
        round trip through its database thread. Frames do not touch the
        database (authentication goes through ``database_sync_to_async``, which
        does its own cleanup), so they skip it: it would cost more than the
        model call of a small request.
        """
        if message["type"] == "websocket.receive":
            await self.websocket_receive(message)
        else:
            await super().dispatch(message)

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        """Called for every frame the client sends."""
        received = time.perf_counter()
        received_wall = time.time()
        self._frames_seen += 1
        text = message.get("text")
        data = message.get("bytes")
        binary = text is None
        size = len(text) if text is not None else len(data or b"")
        if size > self.max_frame_bytes:
            await self.close(CLOSE_TOO_BIG)
            return
        body: dict[str, Any] | None = None
        try:
            frame = protocol.decode(text, data)
            body = frame.body
            rid = protocol.request_id(body)
            kind = protocol.frame_type(body, rid)
            if self.client is None:
                if kind != "auth":
                    raise ProtocolError(Outcome.INVALID_REQUEST, "Authenticate first with an auth message.", rid)
                await self._auth(body)
                return
            if kind == "predict":
                await self._predict(body, rid, binary, received, received_wall,
                                    text if text is not None else (data or b""))
            elif kind == "ping":
                await self._send_message({"type": "pong", "id": rid}, binary)
            elif kind == "models":
                await self._send_message(
                    {"type": "models", "models": self.service.catalog(self.client.models)}, binary
                )
            else:
                raise ProtocolError(Outcome.INVALID_REQUEST, "Already authenticated.", rid)
        except ProtocolError as exc:
            await self._refuse(body, exc, binary, received, received_wall)
            if self._flooded:
                # Past its rate limit many times over: answer what was accepted, then 1008.
                await self._close_when_answered(CLOSE_POLICY, self._request_timeout_s())

    async def _refuse(self, body: dict[str, Any] | None, exc: ProtocolError, binary: bool, received: float,
                      received_wall: float) -> None:
        """Send a refused frame its error reply, and report it with what the client got."""
        delivered = self.deliverable()
        if delivered:
            await self._send_message(protocol.error(exc.code, exc.message, exc.request_id, **exc.extra), binary)
        client = self.client
        events.prediction(reports.refused(body, exc, self.default_model, client.name if client else None,
                                          self.service.labels, received, received_wall, delivered=delivered))

    async def _auth(self, body: dict[str, Any]) -> None:
        client = await authenticate(body.get("token"))
        if client is None:
            await self.close(CLOSE_UNAUTHORIZED)
            return
        await self._authenticated(client)

    async def _predict(
        self, body: dict[str, Any], rid: Any, binary: bool, received: float, received_wall: float,
        frame: str | bytes,
    ) -> None:
        client = self.client
        if client is None:
            raise ProtocolError(Outcome.INVALID_REQUEST, "Authenticate first with an auth message.", rid)
        if self._closing is not None or (self.draining and self._frames_seen > self._serve_through):
            raise ProtocolError(
                Outcome.OVERLOADED, "The server is shutting down; send this request again on a new connection.",
                rid, retry_after_ms=SHUTDOWN_RETRY_AFTER_MS,
            )
        wait_ms = await rate_limits.acquire(client)
        if wait_ms:
            self._flooded = self._flooding(client)
            raise ProtocolError(
                Outcome.RATE_LIMITED,
                f"This key may send {client.rate_limit_per_s:g} requests per second.",
                rid,
                retry_after_ms=max(1, round(wait_ms)),
            )
        entry: ServedVersion | None = None
        try:
            if len(self.in_flight) >= self.max_in_flight:
                raise Overloaded(
                    f"This connection already has {self.max_in_flight} requests pending.",
                    retry_after_ms=self._retry_after_ms(body.get("model", self.default_model)),
                )
            request = protocol.predict_request(body, rid, self.default_model)
            entry = self.service.entry(request.model, request.version, client.models)
            rows = entry.schema.to_array(request.inputs, max_rows=self.max_rows)
            # A canary answers its share of the requests naming no version (inference.rollout.routing).
            entry, key = self.service.route(entry, rows, pinned=request.version is not None, request_id=rid)
            future = self.service.submit(entry, rows, received_at=received, key=key)
        except InferenceError as exc:
            extra = {"retry_after_ms": exc.retry_after_ms} if isinstance(exc, Overloaded) else {}
            error = ProtocolError(exc.code, str(exc), rid, **extra)
            error.entry = entry  # the model version the request resolved to, for the log
            raise error from None
        self.in_flight.add(future)
        events.in_flight_change(+1)
        future.add_done_callback(
            partial(self._answered, _Request(entry, rid, request.inputs, rows.shape[0], binary, received,
                                             received_wall, frame))
        )

    def _retry_after_ms(self, model: Any) -> int:
        try:
            entry = self.service.entry(model) if isinstance(model, str) else None
        except InferenceError:
            entry = None
        if entry is not None and entry.batcher is not None:
            return entry.batcher.retry_after_ms()
        return 10

    def _flooding(self, client: Client) -> bool:
        """Count a frame past the key's rate; True once the connection is to be closed for flooding."""
        window = int(time.monotonic())
        if window != self._flood_window:
            self._flood_window, self._flood_count = window, 0
        self._flood_count += 1
        limit = max(FLOOD_MINIMUM, FLOOD_FACTOR * (client.rate_limit_per_s or 0))
        if self._flood_count > limit:
            logger.warning("Closing a connection of key %s: %d frames in a second past its rate limit",
                           client.name, self._flood_count)
            return True
        return False

    @staticmethod
    def _request_timeout_s() -> float:
        # Requests already accepted end within their deadline: answered, or `timeout`.
        return settings.PLATFORM_REQUEST_TIMEOUT_MS / 1000.0 + 1.0

    def _answered(self, request: _Request, future: asyncio.Future[Any]) -> None:
        """Done callback of a request's future: send its reply, then report what the client got."""
        self.in_flight.discard(future)
        events.in_flight_change(-1)
        if future.cancelled():  # the client went away before its batch ran: dropped, not run
            self._emit(request, None, Outcome.NOT_DELIVERED, error=reports.LEFT_BEFORE_RUN,
                       total_ms=(time.perf_counter() - request.received) * 1000.0)
            return
        message, outcome, outputs, timings = self._outcome(request, future)
        send_frame = self._send_frame
        if send_frame is None:
            task = asyncio.ensure_future(self._send_and_emit(request, message, outcome, outputs, timings))
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)
            return
        delivered = False
        if self.deliverable():
            payload = protocol.encode_bytes(message, request.binary)
            try:
                delivered = send_frame(payload, request.binary)
            except Exception:
                logger.exception("Could not send the reply to request %r", request.rid)
        if not delivered:
            self._emit_undelivered(request, outcome, outputs, timings)
        elif outcome == Outcome.OK:
            # The log reads inputs and outputs back from the frame and the reply, off the loop.
            self._emit(request, outputs, outcome, frame=request.frame, reply=payload, **timings)
        else:
            self._emit(request, outputs, outcome, **timings)

    async def _send_and_emit(self, request: _Request, message: dict[str, Any], outcome: str, outputs: Any,
                             timings: dict[str, Any]) -> None:
        """The reply through ASGI ``send``, under a server without ``platform.send_frame``."""
        delivered = self.deliverable()
        try:
            if delivered:
                await self._send_message(message, request.binary)
        except asyncio.CancelledError:
            self._emit_undelivered(request, outcome, outputs, timings)
            raise
        except Exception:
            logger.exception("Could not send the reply to request %r", request.rid)
            delivered = False
        if delivered:
            self._emit(request, outputs, outcome, **timings)
        else:
            self._emit_undelivered(request, outcome, outputs, timings)

    def _outcome(self, request: _Request, future: asyncio.Future[Any]) -> tuple[dict[str, Any], str, Any, dict]:
        """The reply to a request whose batch has run, its outcome, outputs and timings for the log."""
        entry = request.entry
        try:
            result = future.result()
            outputs = replies.output_rows(entry, result.outputs, known_finite=result.all_finite)
        except Exception as exc:
            if not isinstance(exc, InferenceError):
                logger.error("Request %r to %s v%s failed", request.rid, entry.name, entry.version, exc_info=exc)
                exc = ModelCallFailed(f"The model {entry.name} failed on this request.")
            total_ms = (time.perf_counter() - request.received) * 1000.0
            return (protocol.error(exc.code, str(exc), request.rid), exc.code, None,
                    {"total_ms": total_ms, "error": str(exc)})
        total_ms = (time.perf_counter() - request.received) * 1000.0
        reply = replies.prediction(request.rid, entry, outputs, result, total_ms)
        return reply, Outcome.OK, outputs, {
            "queue_ms": result.queue_ms, "inference_ms": result.inference_ms, "total_ms": total_ms,
            "batch_size": result.batch_size,
        }

    # -- replies and reports ------------------------------------------------------------

    async def _send_message(self, message: dict[str, Any], binary: bool) -> None:
        text, data = protocol.encode(message, binary)
        await self.send(text_data=text, bytes_data=data)

    def _emit(self, request: _Request, outputs: Any, outcome: str, **fields: Any) -> None:
        """Report an accepted request; ``fields``: timings, error, and for a prediction its frame and reply."""
        client = self.client
        events.prediction(reports.answered(request.entry, client.name if client else None, request.rid,
                                           request.n_rows, request.inputs, outputs, outcome,
                                           request.received_wall, **fields))

    def _emit_undelivered(self, request: _Request, outcome: str, outputs: Any, timings: dict[str, Any]) -> None:
        fields = dict(timings)
        what = "a prediction" if outcome == Outcome.OK else f"{outcome}: {fields.get('error')}"
        fields["error"] = f"{reports.CLOSED_BEFORE_REPLY} The reply was {what}"
        self._emit(request, outputs, Outcome.NOT_DELIVERED, **fields)

    # -- shutdown -------------------------------------------------------------------

    async def drain(self, timeout_s: float) -> None:
        """Answer what the client has sent, then close with 1001; called when the server shuts down.

        Frames the server had received before the drain began are served,
        those still unread included; frames after them are refused
        (``overloaded``, with ``retry_after_ms``). The connection closes once
        those requests are answered, or when ``timeout_s`` runs out.
        """
        self._serve_through = self._frames_seen + self.receive_backlog()
        self.draining = True
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0 and not self._closed.is_set():
            if self.in_flight:
                await asyncio.wait(list(self.in_flight), timeout=left)
            elif self._frames_seen < self._serve_through:
                await asyncio.sleep(DRAIN_POLL_S)  # frames received before the drain, not read yet
            else:
                break
        if self.in_flight:
            logger.warning("Closing a draining connection with %d requests still in flight", len(self.in_flight))
        await self.close(CLOSE_GOING_AWAY)
        # Let the closing handshake finish: once the reactor stops, unsent frames are lost.
        try:
            async with asyncio.timeout(CLOSE_HANDSHAKE_S):
                await self._closed.wait()
        except TimeoutError:
            pass
