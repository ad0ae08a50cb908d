"""An asyncio client for the prediction stream (docs/protocol.md), on the ``websockets`` library.

Rules:

- requests are pipelined: ``predict`` returns when its reply arrives, and any
  number may be awaited at once; replies are matched by id, never by order;
- at most the server's ``max_in_flight`` requests are out on the connection;
  the rest wait in the client;
- after a close with 1001 (the server going away, having answered what it
  accepted) or a connection that drops, the client connects again, with an
  exponential, bounded backoff with jitter, and sends again every request not
  yet answered; each ``predict`` returns exactly one answer. A request lost
  with a dropped connection may have been served before the drop: resending
  makes delivery at least once on the server, exactly once to the caller;
- ``overloaded`` and ``rate_limited`` are retried after the server's
  ``retry_after_ms``, up to ``max_retries`` times, then raised;
- a refused key (4401), a model in the URL that does not exist (4404) and
  policy closes (1008, 1009) end the client: every waiting request raises.

Nothing here imports Django or the platform: any Python service can use it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from .backoff import Backoff
from .codec import Codec
from .errors import (
    ClientClosed,
    ClientError,
    ConnectionLost,
    ConnectionRejected,
    ProtocolViolation,
    RequestFailed,
    error_for_close,
)
from .requests import Request, RequestBook

logger = logging.getLogger(__name__)

#: Error codes the server answers with a ``retry_after_ms``: the request may succeed if sent again later.
RETRYABLE_CODES = frozenset({"overloaded", "rate_limited"})
#: A connection that stayed open this long, or answered a request, starts the backoff over.
STABLE_CONNECTION_S = 1.0


class PredictionClient:
    """A connection to ``/ws/v1/predict/`` (or ``/ws/v1/predict/<model>/``) authenticated with an API key.

    ``auth`` is ``"header"`` (``Authorization: Bearer``, for services) or
    ``"message"`` (the first-message form). ``max_reconnect_attempts`` of None
    keeps trying for as long as requests wait.
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        encoding: str = "json",
        auth: str = "header",
        max_retries: int = 3,
        backoff: Backoff | None = None,
        max_reconnect_attempts: int | None = None,
        open_timeout_s: float = 10.0,
        max_frame_bytes: int = 2**24,
    ) -> None:
        if auth not in ("header", "message"):
            raise ValueError(f"auth must be 'header' or 'message', not {auth!r}.")
        if max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, not {max_retries!r}.")
        if max_reconnect_attempts is not None and max_reconnect_attempts < 0:
            raise ValueError(f"max_reconnect_attempts must be None or 0 or more, not {max_reconnect_attempts!r}.")
        if not open_timeout_s > 0:
            raise ValueError(f"open_timeout_s must be a positive number of seconds, not {open_timeout_s!r}.")
        self.url = url
        self.api_key = api_key
        self.auth = auth
        self.codec = Codec(encoding)
        self.max_retries = max_retries
        self.backoff = backoff or Backoff()
        self.max_reconnect_attempts = max_reconnect_attempts
        self.open_timeout_s = open_timeout_s
        self.max_frame_bytes = max_frame_bytes
        #: The models this key may use, as in the last ``ready`` or ``models`` message.
        self.models: dict[str, Any] = {}
        self.max_rows: int | None = None
        #: How many times a new connection was opened after the first.
        self.reconnects = 0
        #: How many requests were sent again after ``overloaded`` or ``rate_limited``.
        self.retries = 0
        self._book = RequestBook()
        self._ids = itertools.count(1)
        self._ws: ClientConnection | None = None
        self._runner: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._closing = False
        self._error: ClientError | None = None
        self._rng = random.Random()

    # -- public API -------------------------------------------------------------------

    async def connect(self) -> PredictionClient:
        """Open the connection and wait for ``ready``; raises at once if that fails (no retries)."""
        if self._runner is not None:
            raise ClientError("This client is already connected; make a new one to connect again.")
        ws = await self._open()
        self._runner = asyncio.create_task(self._run(ws), name="prediction-client")
        return self

    async def predict(self, model: str | None, rows: Sequence[Any], version: int | None = None) -> dict[str, Any]:
        """Send one request and return its ``prediction`` reply; raises ``RequestFailed`` for an error reply.

        ``model`` None uses the model named in the URL.
        """
        if self._error is not None:
            raise self._error
        if self._runner is None or self._closing:
            raise ClientClosed("The client is not connected: call connect() first, or make a new one after close().")
        rid = next(self._ids)
        message: dict[str, Any] = {"type": "predict", "id": rid, "inputs": rows}
        if model is not None:
            message["model"] = model
        if version is not None:
            message["version"] = version
        request = Request(rid, self.codec.encode(message), asyncio.get_running_loop().create_future())
        self._book.add(request)
        self._wakeup.set()
        try:
            return await request.future
        finally:
            self._book.done(rid)

    @property
    def pending(self) -> int:
        """Requests made and not yet answered."""
        return len(self._book)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Wait up to ``timeout_s`` for the requests in flight, fail the rest with ``ClientClosed``, close (1000)."""
        if self._closing:
            return
        deadline = time.monotonic() + timeout_s
        while len(self._book) and self._error is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self._closing = True
        self._book.fail_all(ClientClosed("The client was closed before this request was answered."))
        if self._ws is not None:
            await self._ws.close()
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)

    async def __aenter__(self) -> PredictionClient:
        return await self.connect()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- connections ------------------------------------------------------------------

    async def _open(self) -> ClientConnection:
        """A new connection that said ``ready``; raises ``ClientError`` or ``OSError``."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key and self.auth == "header" else None
        try:
            ws = await connect(self.url, additional_headers=headers, max_size=self.max_frame_bytes,
                               open_timeout=self.open_timeout_s)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status >= 500:
                raise ConnectionError(f"The server answered the handshake with HTTP {status}.") from None
            raise ConnectionRejected(f"The server refused the handshake with HTTP {status} (an Origin it does not "
                                    "allow, or not a prediction endpoint).", http_status=status) from None
        except InvalidURI as exc:
            raise ConnectionRejected(f"{self.url!r} is not a WebSocket URL: {exc}") from None
        except InvalidHandshake as exc:
            raise ConnectionError(f"The WebSocket handshake failed: {exc}") from None
        try:
            if self.api_key and self.auth == "message":
                await ws.send(self.codec.encode({"type": "auth", "token": self.api_key}))
            ready = self.codec.decode(await asyncio.wait_for(ws.recv(), self.open_timeout_s))
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            raise error_for_close(code, exc.rcvd.reason if exc.rcvd else "") or ConnectionError(
                f"The server closed the connection before it was ready (close code {code})."
            ) from None
        except BaseException:
            await ws.close()
            raise
        if ready.get("type") != "ready":
            await ws.close()
            raise ProtocolViolation(f"The server's first message was {ready.get('type')!r}, not 'ready'.")
        self.models = ready.get("models") or {}
        self.max_rows = ready.get("max_rows")
        self._book.window = max(1, int(ready.get("max_in_flight") or 1))
        self._ws = ws
        return ws

    async def _run(self, ws: ClientConnection) -> None:
        """Serve connections until the client closes or meets an error it cannot recover from."""
        try:
            await self._connections(ws)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # no request may wait for ever on a client that stopped
            logger.exception("Prediction client for %s failed", self.url)
            self._give_up(ClientError(f"The prediction client stopped: {exc!r}"))

    async def _connections(self, ws: ClientConnection) -> None:
        attempt = 0
        while True:
            opened, answered = time.monotonic(), await self._serve(ws)
            self._ws = None
            if self._closing:
                return
            code, reason = (ws.close_code, ws.close_reason or "")
            error = error_for_close(code, reason)
            if error is not None:
                self._give_up(error)
                return
            if answered or time.monotonic() - opened >= STABLE_CONNECTION_S:
                attempt = 0
            resent = self._book.connection_lost()
            logger.info("Connection to %s closed (code %s); reconnecting, %d requests to send again.",
                        self.url, code, resent)
            try:
                ws, attempt = await self._reconnect(attempt)
            except ClientError as exc:
                self._give_up(exc)
                return
            self.reconnects += 1

    async def _reconnect(self, attempt: int) -> tuple[ClientConnection, int]:
        """A new connection after ``attempt`` failed ones, waiting the backoff's delay before each try."""
        while True:
            if self.max_reconnect_attempts is not None and attempt >= self.max_reconnect_attempts:
                raise ConnectionLost(f"Could not reconnect to {self.url} in {attempt} attempts.")
            await asyncio.sleep(self.backoff.delay_s(attempt, self._rng))
            attempt += 1
            try:
                return await self._open(), attempt
            except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake) as exc:
                logger.info("Reconnecting to %s failed (attempt %d): %s", self.url, attempt, exc)

    async def _serve(self, ws: ClientConnection) -> int:
        """Send and receive on ``ws`` until it closes; return how many replies it delivered."""
        writer = asyncio.create_task(self._write(ws), name="prediction-client-writer")
        answered = 0
        try:
            async for frame in ws:
                try:
                    answered += self._dispatch(self.codec.decode(frame))
                except ProtocolViolation as exc:
                    logger.warning("Ignored a frame from %s: %s", self.url, exc)
        except ConnectionClosed:
            pass
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        return answered

    async def _write(self, ws: ClientConnection) -> None:
        """Send queued requests while the connection has free slots; sleep until there is more to send."""
        while True:
            request = self._book.next_to_send()
            if request is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            try:
                await ws.send(request.frame)
            except ConnectionClosed:
                return  # the request stays out; the next connection sends it again

    # -- replies -----------------------------------------------------------------------

    def _dispatch(self, message: dict[str, Any]) -> int:
        """Handle one message from the server; return 1 if it answered a request."""
        kind = message.get("type")
        if kind == "models":
            self.models = message.get("models") or {}
            return 0
        if kind not in ("prediction", "error"):
            return 0  # pong, and message types a later protocol version may add
        request = self._book.answered(message.get("id"))
        self._wakeup.set()
        if request is None:
            if kind == "error" and message.get("id") is None:
                logger.warning("The server could not read a request: %s", message.get("error"))
            return 0
        if request.future.done():  # cancelled by its caller, who has not yet taken it out of the book
            self._book.done(request.id)
            return 0
        if kind == "prediction":
            request.future.set_result(message)
            return 1
        error = RequestFailed.from_reply(message)
        if error.code in RETRYABLE_CODES and request.retries < self.max_retries:
            request.retries += 1
            self.retries += 1
            delay_s = (error.retry_after_ms or 0) / 1000.0 * (1.0 + 0.1 * self._rng.random())
            asyncio.get_running_loop().call_later(delay_s, self._retry, request.id)
            return 1
        request.future.set_exception(error)
        return 1

    def _retry(self, request_id: int) -> None:
        self._book.queue_again(request_id)
        self._wakeup.set()

    def _give_up(self, error: ClientError) -> None:
        logger.warning("Prediction client for %s stopped: %s", self.url, error)
        self._error = error
        self._book.fail_all(error)
