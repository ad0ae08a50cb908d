"""What a WebSocket connection writes in one pass of the event loop leaves in one ``send()`` at the next.

Why: Twisted's ``write`` never sends at once; it registers the socket for
writability, waits a pass for the selector to report it and unregisters it
again: two ``epoll_ctl`` calls and a trip through the reactor's callback
wrappers for every burst of replies. :class:`CoalescedWrites` sends itself
when nothing of the connection is waiting in Twisted's buffer, and leaves
the rest to Twisted. A data frame from ``platform.send_frame`` is framed here
(:func:`frame_header`) rather than through autobahn's general
``sendMessage`` when the connection uses no compression, fragmentation or
frame logging. Can go when Twisted's TCP transport tries a ``send()`` before
it waits for writability, or when the platform leaves Twisted.

Only plain TCP connections are coalesced; TLS and wrapped transports write
as Twisted does. This reads Twisted's private buffer state of ``tcp.Server``
(``dataBuffer``, ``offset``, ``_tempDataLen``, ``_writeDisconnected``).
"""

from __future__ import annotations

import asyncio
import logging
import struct

from autobahn.websocket.protocol import TrafficStats
from autobahn.websocket.protocol import WebSocketProtocol as AutobahnWebSocketProtocol
from autobahn.websocket.protocol import WebSocketServerProtocol as AutobahnWebSocketServerProtocol
from daphne.server import Server
from twisted.internet import abstract, tcp

from platform_core.lifecycle import run_send_hooks, send_hooks
from platform_core.server.internals import Attribute, Listed, Mentioned, Parameter, require
from platform_core.server.send_frame import SendFrameProtocol

logger = logging.getLogger(__name__)

INTERNALS = (
    # CoalescedWrites.flush: Twisted's unsent bytes are dataBuffer[offset:]
    # followed by _tempDataLen bytes its write() has queued since.
    Attribute("twisted", tcp.Server, "connected"),
    Attribute("twisted", tcp.Server, "_writeDisconnected"),
    Attribute("twisted", tcp.Server, "dataBuffer"),
    Attribute("twisted", tcp.Server, "offset"),
    Attribute("twisted", tcp.Server, "writeSomeData"),
    Attribute("twisted", tcp.Server, "write"),
    # tcp.Server's write() hands a plain TCP write to FileDescriptor's.
    Mentioned("twisted", tcp.Server, "write", "FileDescriptor"),
    Mentioned("twisted", abstract.FileDescriptor, "write", "_tempDataLen"),
    # CoalescedWritesProtocol.sendData does what autobahn's does, but for the write.
    Parameter("autobahn", AutobahnWebSocketProtocol, "sendData", "sync"),
    Parameter("autobahn", AutobahnWebSocketProtocol, "sendData", "chopsize"),
    Mentioned("autobahn", AutobahnWebSocketProtocol, "_connectionMade", "send_queue"),
    Mentioned("autobahn", AutobahnWebSocketProtocol, "_connectionMade", "state"),
    Mentioned("autobahn", AutobahnWebSocketProtocol, "_connectionMade", "trafficStats"),
    Attribute("autobahn", AutobahnWebSocketProtocol, "STATE_OPEN"),
    Attribute("autobahn", AutobahnWebSocketProtocol, "STATE_CONNECTING"),
    Attribute("autobahn", AutobahnWebSocketProtocol, "STATE_PROXY_CONNECTING"),
    Mentioned("autobahn", TrafficStats, "reset", "outgoingOctetsWireLevel"),
    Mentioned("autobahn", TrafficStats, "reset", "preopenOutgoingOctetsWireLevel"),
    Listed("autobahn", AutobahnWebSocketServerProtocol, "CONFIG_ATTRS", "logOctets"),
    Attribute("autobahn", AutobahnWebSocketProtocol, "logTxOctets"),
    # CoalescedWritesProtocol.send_frame frames itself only where sendMessage
    # would send one plain frame: these are what would make it do otherwise.
    Mentioned("autobahn", AutobahnWebSocketProtocol, "_connectionMade", "_perMessageCompress"),
    Mentioned("autobahn", AutobahnWebSocketProtocol, "_connectionMade", "trackedTimings"),
    Listed("autobahn", AutobahnWebSocketServerProtocol, "CONFIG_ATTRS", "logFrames"),
    Listed("autobahn", AutobahnWebSocketServerProtocol, "CONFIG_ATTRS", "maskServerFrames"),
    Listed("autobahn", AutobahnWebSocketServerProtocol, "CONFIG_ATTRS", "autoFragmentSize"),
    Listed("autobahn", AutobahnWebSocketServerProtocol, "CONFIG_ATTRS", "maxMessagePayloadSize"),
    Attribute("daphne", Server, "create_application"),
)


def check_internals() -> None:
    """Raise IncompatibleDependency if the installed Twisted, autobahn or daphne lacks what this patch relies on."""
    require(__name__, INTERNALS)


_LENGTH_16 = struct.Struct("!BBH")
_LENGTH_64 = struct.Struct("!BBQ")


def frame_header(length: int, binary: bool) -> bytes:
    """The header of an unfragmented, unmasked server data frame of ``length`` payload bytes (RFC 6455, 5.2)."""
    first = 0x82 if binary else 0x81  # FIN and the opcode: 2 binary, 1 text
    if length <= 125:
        return bytes((first, length))
    if length <= 0xFFFF:
        return _LENGTH_16.pack(first, 126, length)
    return _LENGTH_64.pack(first, 127, length)


class WriteFlusher:
    """Sends, once per pass of one event loop, what each connection wrote during the pass before."""

    __slots__ = ("_loop", "_dirty")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[CoalescedWrites] = []

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def mark(self, writes: CoalescedWrites) -> None:
        if not self._dirty:
            self._loop.call_soon(self._flush)
        self._dirty.append(writes)

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        if send_hooks:
            run_send_hooks()  # what must be on disk before the replies leave (the prediction log's journal)
        for writes in dirty:
            try:
                writes.flush()
            except Exception:  # one broken connection must not keep the others' replies back
                logger.exception("Could not send to a WebSocket connection")


class CoalescedWrites:
    """The writes of one TCP connection, joined and sent with one ``send()`` per pass of the event loop.

    Order is kept: while Twisted still holds unsent bytes of this connection
    (the socket's buffer was full), everything goes through Twisted's own
    buffer, which sends when the socket is writable again. A connection
    that Twisted has closed takes nothing, as Twisted's ``write`` does. A
    ``loseConnection()`` in the same pass comes after the flush: Twisted
    closes only once the socket, reported writable in a later pass, has
    taken its buffer, and this pass's flush was queued first.
    """

    __slots__ = ("_transport", "_flusher", "_pending")

    def __init__(self, transport: tcp.Server, flusher: WriteFlusher) -> None:
        self._transport = transport
        self._flusher = flusher
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._pending:
            self._flusher.mark(self)
        self._pending.append(data)

    def flush_now(self) -> None:
        """Send what is waiting now rather than at the flusher's turn (the journal first, as the flusher does)."""
        if self._pending:
            if send_hooks:
                run_send_hooks()
            self.flush()

    def flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        transport = self._transport
        if not transport.connected or transport._writeDisconnected:
            return
        if transport._tempDataLen or len(transport.dataBuffer) > transport.offset:
            transport.write(data)  # behind what Twisted has not sent yet
            return
        sent = transport.writeSomeData(data)
        if isinstance(sent, Exception):
            # The connection is broken: Twisted's own write path meets the
            # same error on its next attempt and closes the connection.
            transport.write(data)
        elif sent < len(data):
            transport.write(data[sent:])


class CoalescedWritesProtocol(SendFrameProtocol):
    _writes: CoalescedWrites | None = None

    def coalesce_writes(self, flusher: WriteFlusher) -> bool:
        """Send this connection's writes through ``flusher``; only for a plain TCP transport."""
        if type(self.transport) is not tcp.Server:  # TLS and wrapped transports write as Twisted does
            return False
        self._writes = CoalescedWrites(self.transport, flusher)
        return True

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """autobahn's one way to the transport (handshake, frames, close): coalesced where possible."""
        writes = self._writes
        if writes is None or sync or chopsize or self.send_queue:
            if writes is not None:
                if send_hooks:
                    run_send_hooks()
                writes.flush()  # what was written before goes first
            super().sendData(data, sync, chopsize)
            return
        writes.write(data)
        if self.state == self.STATE_OPEN:
            self.trafficStats.outgoingOctetsWireLevel += len(data)
        elif self.state in (self.STATE_CONNECTING, self.STATE_PROXY_CONNECTING):
            self.trafficStats.preopenOutgoingOctetsWireLevel += len(data)
        if self.logOctets:
            self.logTxOctets(data, False)

    def send_frame(self, payload: bytes, binary: bool) -> bool:
        """Send one data frame of an accepted connection; False once it is closing or closed."""
        if (
            self._writes is None
            or self.state != self.STATE_OPEN
            or self._perMessageCompress is not None
            or self.send_queue
            or self.logFrames
            or self.trackedTimings
            or self.maskServerFrames
            or 0 < self.autoFragmentSize < len(payload)
            or 0 < self.maxMessagePayloadSize < len(payload)
        ):
            return super().send_frame(payload, binary)
        # What sendMessage would send: one final, unmasked, uncompressed frame.
        self.sendData(frame_header(len(payload), binary) + payload)
        return True


class CoalescedWritesServer(Server):
    _flusher: WriteFlusher | None = None

    def create_application(self, protocol, scope):
        """Called when a connection's ASGI application is about to be created: coalesces its writes."""
        if scope.get("type") == "websocket" and isinstance(protocol, CoalescedWritesProtocol):
            flusher = self.write_flusher()
            if flusher is not None:
                protocol.coalesce_writes(flusher)
        return super().create_application(protocol, scope)

    def write_flusher(self) -> WriteFlusher | None:
        """The flusher of the running event loop's connections; None outside one."""
        try:
            loop = asyncio.get_running_loop()  # the asyncio reactor's loop: create_application runs on it
        except RuntimeError:
            return None
        flusher = self._flusher
        if flusher is None or flusher.loop is not loop:
            flusher = self._flusher = WriteFlusher(loop)
        return flusher
