"""One request of a lean HTTP connection, as the ASGI application sees it: its body, its disconnect, its response.

:mod:`platform_core.server.lean_http` parses the request and owns the
connection; this is the exchange with the application: ``receive`` hands
over the body as it arrives and then ``http.disconnect``, ``send`` frames the
response (``Content-Length``, or chunked where the application gave none)
and writes it when its body ends, and ``watch`` (the ``platform.disconnect``
extension) calls back when the client leaves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class Connection(Protocol):
    """What a response needs of its connection."""

    closed: bool

    def write(self, data: bytes) -> None: ...


class Request:
    """One request's ASGI side: its body as it arrives, and whether the client is still there."""

    __slots__ = ("body", "complete", "disconnected", "waiters", "watchers", "started", "finished", "keep_alive")

    def __init__(self, keep_alive: bool) -> None:
        self.body: list[bytes] = []
        self.complete = False
        self.disconnected = False
        self.waiters: list[asyncio.Future[None]] = []
        #: Called when the client disconnects (the ``platform.disconnect`` extension).
        self.watchers: list[Callable[[], None]] = []
        self.started = False
        self.finished = False
        self.keep_alive = keep_alive

    def wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def watch(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` when the client disconnects (at once if it has); returns what stops the watch."""
        if self.disconnected:
            callback()
            return _nothing
        self.watchers.append(callback)
        return lambda: self.watchers.remove(callback) if callback in self.watchers else None

    def lost(self) -> None:
        self.disconnected = True
        self.wake()
        watchers, self.watchers = self.watchers, []
        for callback in watchers:
            try:
                callback()
            except Exception:  # one watcher's failure must not keep the others from hearing it
                logger.exception("A disconnect watcher failed")


def _nothing() -> None:
    return None


def receiver(request: Request) -> Callable[[], Any]:
    """ASGI ``receive``: the body as it arrives, then ``http.disconnect`` once the client left or was answered."""
    body_ended = False

    async def receive() -> dict[str, Any]:
        nonlocal body_ended
        while True:
            # As uvicorn does: after the response, a receive() means the request is over for the app.
            if request.disconnected or request.finished:
                return {"type": "http.disconnect"}
            if not body_ended and (request.body or request.complete):
                body = b"".join(request.body)
                request.body.clear()
                body_ended = request.complete
                return {"type": "http.request", "body": body, "more_body": not body_ended}
            waiter = asyncio.get_running_loop().create_future()
            request.waiters.append(waiter)
            await waiter

    return receive


class Responder:
    """The ASGI ``send`` of one request: the head and body, written when the body ends."""

    def __init__(self, connection: Connection, request: Request, head_only: bool) -> None:
        self.connection = connection
        self.request = request
        self.head_only = head_only
        self.head = b""
        self.chunked = False

    async def send(self, message: dict[str, Any]) -> None:
        request, connection = self.request, self.connection
        if connection.closed:
            raise OSError("The client closed the connection.")
        kind = message["type"]
        if kind == "http.response.start":
            if request.started:
                raise RuntimeError("http.response.start sent twice.")
            request.started = True
            self.head, self.chunked = response_head(message, request.keep_alive)
        elif kind == "http.response.body":
            if not request.started or request.finished:
                raise RuntimeError("http.response.body outside a response.")
            body, more = message.get("body", b""), message.get("more_body", False)
            if self.head_only:
                body = b""
            elif self.chunked and body:
                body = b"%x\r\n%s\r\n" % (len(body), body)
            if self.head:
                body, self.head = self.head + body, b""
            if not more and self.chunked and not self.head_only:
                body += b"0\r\n\r\n"
            if body:
                connection.write(body)
            if not more:
                request.finished = True
                request.wake()

    def internal_error(self) -> None:
        self.request.keep_alive = False
        self.request.finished = True
        self.connection.write(closing_response(HTTPStatus.INTERNAL_SERVER_ERROR, b"Internal Server Error"))


def closing_response(status: HTTPStatus, message: bytes) -> bytes:
    """A plain-text response after which the server closes the connection."""
    head = (f"HTTP/1.1 {status.value} {status.phrase}\r\ncontent-type: text/plain\r\n"
            f"content-length: {len(message)}\r\nconnection: close\r\n\r\n")
    return head.encode("latin-1") + message


def response_head(message: dict[str, Any], keep_alive: bool) -> tuple[bytes, bool]:
    status = int(message["status"])
    try:
        reason = HTTPStatus(status).phrase.encode()
    except ValueError:
        reason = b""
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    has_length = False
    for name, value in message.get("headers", ()):
        lowered = bytes(name).lower()
        if lowered == b"content-length":
            has_length = True
        elif lowered == b"connection":
            continue
        lines.append(b"%s: %s\r\n" % (bytes(name), bytes(value)))
    chunked = not has_length and status >= 200 and status not in (204, 304)
    if chunked:
        lines.append(b"transfer-encoding: chunked\r\n")
    lines.append(b"connection: keep-alive\r\n\r\n" if keep_alive else b"connection: close\r\n\r\n")
    return b"".join(lines), chunked
