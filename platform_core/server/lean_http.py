"""Plain HTTP requests parsed with httptools and handed straight to the ASGI application.

Why: for a single-row ``/v2`` infer, Twisted's ``HTTPChannel`` (headers
parsed line by line in Python, ``Content-Type`` parsed through
``email.message``) and daphne's ``WebRequest`` (a queue, a Deferred chain and
an access-log line per request) cost several times what the inference does.
Can go when daphne's HTTP path costs about as little.

How: each plain-TCP connection daphne's HTTP factory accepts starts with
:class:`LeanHTTPProtocol`. Its first request decides. A request under one of
``LEAN_PREFIXES`` that asks for no protocol upgrade is served here: httptools
(the C parser uvicorn uses) reads it, the ASGI application gets the scope,
the body as it arrives and ``http.disconnect`` when the client leaves, and
the response leaves in one write. Any other first request (a WebSocket
handshake, the admin, the dashboard, static files), and every connection
over TLS, is handed with every byte received so far to the channel daphne's
factory would have built, which keeps the connection from then on. A later
request on a lean connection is served here whatever its path, except an
upgrade, which is handed over the same way, rebuilt from what was parsed
(a handshake has no body).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import httptools
from daphne.http_protocol import HTTPFactory
from twisted.internet import protocol, tcp

from platform_core.server.coalescing import CoalescedWrites, WriteFlusher
from platform_core.server.internals import Attribute, require
from platform_core.server.lean_exchange import Request, Responder, closing_response, receiver
from streaming.transport import DISCONNECT

logger = logging.getLogger(__name__)

INTERNALS = (
    Attribute("daphne", HTTPFactory, "buildProtocol"),
    # The handover replaces the protocol a TCP connection delivers its bytes to.
    Attribute("twisted", tcp.Connection, "_dataReceived"),
)

#: Path prefixes whose first request on a connection makes it a lean one.
LEAN_PREFIXES = (b"/v2",)
#: A connection with no request in progress is closed after this long (as Twisted's channel does).
IDLE_TIMEOUT_S = 60.0
#: Request heads larger than this are refused, as Twisted refuses them.
MAX_HEAD_BYTES = 64 * 1024


def check_internals() -> None:
    require(__name__, INTERNALS)


def enabled() -> bool:
    """Whether ``PLATFORM_LEAN_HTTP`` is on (read when the server starts, never at import)."""
    from django.conf import settings

    return bool(getattr(settings, "PLATFORM_LEAN_HTTP", True))


class LeanHTTPProtocol(protocol.Protocol):
    """An HTTP/1.1 connection served with httptools, or handed over to daphne's channel."""

    transport: Any  # Twisted's ITransport, whose zope interface methods mypy cannot call

    def __init__(self, application: Any, fallback: Callable[[], protocol.Protocol], server: Any) -> None:
        self.application = application
        self.fallback = fallback
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.received: list[bytes] = []  # every byte, until the first request decides
        self.decided = False
        self.head_bytes = 0
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.request: Request | None = None
        self.pending: list[tuple[dict[str, Any], Request]] = []  # pipelined, behind the one running
        self.running = False
        #: The request the application is serving now.
        self.serving: Request | None = None
        self.closed = False
        #: Set once the connection is daphne's, or once it was refused: this protocol reads no more.
        self.done_reading = False
        self.idle_timer: asyncio.TimerHandle | None = None
        #: The scope's ``client`` and ``server``: the same for every request of the connection.
        self.client: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None
        #: Responses leave through the server's write flusher, one ``send()`` per pass (as WebSocket frames do).
        self.writes: CoalescedWrites | None = None

    # -- the connection ---------------------------------------------------------------

    def connectionMade(self) -> None:
        if not isinstance(self.transport, tcp.Server):  # TLS and wrapped transports: daphne's own way
            self._hand_over(b"")
            return
        peer, host = self.transport.getPeer(), self.transport.getHost()
        self.client, self.local = (peer.host, peer.port), (host.host, host.port)
        flusher = self._write_flusher() if type(self.transport) is tcp.Server else None
        if flusher is not None:
            self.writes = CoalescedWrites(self.transport, flusher)
        self._arm_idle_timer()

    def _write_flusher(self) -> WriteFlusher | None:
        find = getattr(self.server, "write_flusher", None)
        return find() if find is not None else None

    def write(self, data: bytes) -> None:
        """Send ``data`` after what this connection wrote before."""
        if self.writes is not None:
            self.writes.write(data)
        else:
            self.transport.write(data)

    def flush_writes(self) -> None:
        """Send what is waiting for the next pass now: before the connection changes hands."""
        if self.writes is not None:
            self.writes.flush_now()

    def dataReceived(self, data: bytes) -> None:
        if not self.decided:
            self.received.append(data)
        if self.done_reading:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._hand_over_upgrade(data[upgrade.args[0]:] if upgrade.args else b"")
        except httptools.HttpParserError:
            # Also what an exception raised in a callback (_Stop included) becomes.
            if self.done_reading:
                return
            if self.decided or self.url.startswith(LEAN_PREFIXES):
                self._refuse(HTTPStatus.BAD_REQUEST, b"Malformed HTTP request.")
            else:
                self._hand_over(b"".join(self.received))  # daphne answers what it makes of it

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True
        self._cancel_idle_timer()
        # The request being served (its body may be complete: no longer self.request), the one
        # being read, and those pipelined behind.
        requests = [self.serving, self.request, *(queued for _, queued in self.pending)]
        for request in dict.fromkeys(r for r in requests if r is not None):
            request.lost()

    # -- httptools' callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.head_bytes = 0
        self._cancel_idle_timer()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))
        self._count_head(len(name) + len(value))

    def on_headers_complete(self) -> None:
        if not self.decided:
            upgrade = self.parser.should_upgrade()
            if upgrade or not self.url.startswith(LEAN_PREFIXES):
                self._hand_over(b"".join(self.received))
                raise _Stop
            self.decided = True
            self.received = []
        elif self.parser.should_upgrade():
            return  # handed over by feed_data's HttpParserUpgrade, once the head is complete
        request = Request(self.parser.should_keep_alive())
        scope = self._scope(request)
        self.request = request
        if self.running:
            self.pending.append((scope, request))
        else:
            self._start(scope, request)

    def on_body(self, body: bytes) -> None:
        request = self.request
        if request is not None:
            request.body.append(body)
            request.wake()

    def on_message_complete(self) -> None:
        request = self.request
        if request is not None:
            request.complete = True
            request.wake()
            self.request = None

    # -- serving --------------------------------------------------------------------------------

    def _scope(self, request: Request) -> dict[str, Any]:
        parsed = httptools.parse_url(self.url)
        path = parsed.path or b"/"
        return {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": self.parser.get_http_version(), "method": self.parser.get_method().decode("ascii"),
            "scheme": "http", "path": unquote(path.decode("latin-1")), "raw_path": path,
            "query_string": parsed.query or b"", "root_path": getattr(self.server, "root_path", "") or "",
            "headers": self.headers, "client": self.client, "server": self.local,
            # Lets an application hear of a disconnect without a task blocked in receive().
            "extensions": {DISCONNECT: {"watch": request.watch}},
        }

    def _start(self, scope: dict[str, Any], request: Request) -> None:
        self.running = True
        self.serving = request
        asyncio.ensure_future(self._serve(scope, request))

    async def _serve(self, scope: dict[str, Any], request: Request) -> None:
        responder = Responder(self, request, scope["method"] == "HEAD")
        try:
            await self.application(scope, receiver(request), responder.send)
        except Exception:
            logger.exception("Exception inside application serving %s %s", scope["method"], scope["path"])
            if not request.started and not self.closed:
                responder.internal_error()
        if not request.finished and not self.closed:
            if request.started:
                self.transport.loseConnection()  # a response begun and never ended cannot be framed
            else:
                responder.internal_error()
        self._next(request)

    def _next(self, request: Request) -> None:
        self.running = False
        self.serving = None
        if self.closed:
            return
        if not request.keep_alive or not request.complete:
            # An unread body would be read as the next request.
            self.transport.loseConnection()
            return
        if self.pending:
            scope, queued = self.pending.pop(0)
            self._start(scope, queued)
        else:
            self._arm_idle_timer()

    def _refuse(self, status: HTTPStatus, message: bytes) -> None:
        self.done_reading = True
        self.write(closing_response(status, message))
        self.transport.loseConnection()

    def _count_head(self, n: int) -> None:
        self.head_bytes += n
        if self.head_bytes > MAX_HEAD_BYTES and not self.done_reading:
            self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, b"The request head is too large.")
            raise _Stop

    # -- handing the connection to daphne ---------------------------------------------------------

    def _hand_over(self, data: bytes) -> None:
        self._cancel_idle_timer()
        self.done_reading = True
        self.flush_writes()  # daphne's channel writes through Twisted's buffer, behind these
        self.writes = None
        successor = self.fallback()
        transport = self.transport
        transport.protocol = successor
        successor.makeConnection(transport)
        self.decided = True
        self.received = []
        if data:
            successor.dataReceived(data)

    def _hand_over_upgrade(self, rest: bytes) -> None:
        if self.running or self.pending:
            self._refuse(HTTPStatus.BAD_REQUEST, b"A protocol upgrade must wait for the responses before it.")
            return
        method = self.parser.get_method()
        head = b"%s %s HTTP/%s\r\n" % (method, self.url, self.parser.get_http_version().encode())
        head += b"".join(b"%s: %s\r\n" % (name, value) for name, value in self.headers) + b"\r\n"
        self._hand_over(head + rest)

    # -- idle connections -----------------------------------------------------------------------------

    def _arm_idle_timer(self) -> None:
        self._cancel_idle_timer()
        self.idle_timer = asyncio.get_event_loop().call_later(IDLE_TIMEOUT_S, self._idle)

    def _cancel_idle_timer(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None

    def _idle(self) -> None:
        if not self.running and not self.closed:
            self.transport.loseConnection()


class _Stop(Exception):
    """Stops httptools' parse once the connection is no longer this protocol's to read."""


def serve_plain_http_leanly(factory: HTTPFactory, application: Any) -> None:
    """Make ``factory``'s connections start as :class:`LeanHTTPProtocol`, handing over what they do not serve."""
    build = factory.buildProtocol

    def build_protocol(addr: Any) -> protocol.Protocol:
        lean = LeanHTTPProtocol(application, lambda: build(addr), factory.server)
        lean.factory = factory
        return lean

    factory.buildProtocol = build_protocol  # type: ignore[method-assign]
