"""The platform's daphne: ``python -m platform_core.server`` takes daphne's own arguments.

Six things differ from plain ``daphne``:

- A frame over ``--websocket-max-message-size`` is answered with the close code
  1009 the protocol promises; daphne's WebSocket factory otherwise drops the
  TCP connection without a closing handshake (autobahn's ``failByDrop``).
- The application may close with 1001, 1008 and 1009, which autobahn
  otherwise refuses to send on its behalf.
- Shutdown is graceful: on SIGTERM or SIGINT the shutdown hooks of
  ``platform_core.lifecycle`` run first (each connection's requests in flight
  are answered and it is closed with 1001, the prediction log is flushed), and
  only then does daphne cancel what is left.
- A WebSocket application gets a synchronous way to send an encoded frame,
  the ASGI scope extension ``platform.send_frame`` (``platform_core.extensions``): ``send(payload, binary)``
  writes ``payload`` (bytes) as a text or binary frame at once and returns
  whether the connection was still open. The prediction consumer sends its
  replies from the callback of the batch that answered them, without a task
  per reply; under any other server it falls back to ASGI ``send``.
- Client frames are unmasked with the ``websockets`` library's C
  ``apply_mask`` instead of autobahn's maskers: autobahn builds a CFFI masker
  object for every frame, which for a small frame costs about fifty times the
  unmasking itself (5.7 µs against 0.12 µs for 60 bytes, measured here).
- What a WebSocket connection writes in one pass of the event loop leaves in
  one ``send()`` at the start of the next (:class:`CoalescedWrites`). Twisted
  would register the socket for writability, wait a pass for the selector to
  report it and unregister it again: two ``epoll_ctl`` calls and a trip
  through the reactor's callback wrappers for every burst of replies. A data
  frame from ``platform.send_frame`` is framed here (:func:`frame_header`)
  rather than through autobahn's general ``sendMessage``, where the
  connection uses no compression, fragmentation or frame logging.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from functools import partial

import autobahn.websocket.protocol
from daphne.cli import CommandLineInterface
from daphne.server import Server
from daphne.ws_protocol import WebSocketProtocol
from twisted.internet import defer, tcp
from websockets.speedups import apply_mask

from platform_core.extensions import SEND_FRAME

logger = logging.getLogger(__name__)

# Close codes of RFC 6455 that the protocol sends (going away, policy, too
# big) but that autobahn's sendClose() reserves for itself.
_PROTOCOL_CLOSE_CODES = frozenset({1001, 1008, 1009, 1011})


class XorMasker:
    """autobahn's masker interface (``pointer``, ``reset``, ``process``) over ``websockets``' ``apply_mask``.

    ``process`` may be given a frame's payload in several pieces; the mask
    is rotated to where the previous piece ended.
    """

    __slots__ = ("_mask", "_ptr")

    def __init__(self, mask: bytes) -> None:
        self._mask = bytes(mask)
        self._ptr = 0

    def pointer(self) -> int:
        return self._ptr

    def reset(self) -> None:
        self._ptr = 0

    def process(self, data: bytes) -> bytes:
        offset = self._ptr & 3
        mask = self._mask if not offset else self._mask[offset:] + self._mask[:offset]
        self._ptr += len(data)
        return apply_mask(data, mask)


def create_xor_masker(mask: bytes, length: int | None = None) -> XorMasker:
    return XorMasker(mask)


def use_fast_unmasking() -> None:
    """Make autobahn's WebSocket protocol (in this process) unmask frames with :class:`XorMasker`."""
    autobahn.websocket.protocol.create_xor_masker = create_xor_masker  # type: ignore[attr-defined]


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

    def mark(self, writes: CoalescedWrites) -> None:
        if not self._dirty:
            self._loop.call_soon(self._flush)
        self._dirty.append(writes)

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, []
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


class PlatformWebSocketProtocol(WebSocketProtocol):
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

    def serverClose(self, code=None):
        """Called when the application sends ``websocket.close``."""
        if code in _PROTOCOL_CLOSE_CODES:
            self.sendCloseFrame(code=code, isReply=False)
        else:
            super().serverClose(code)

    def send_frame(self, payload: bytes, binary: bool) -> bool:
        """Send one data frame of an accepted connection; False once it is closing or closed."""
        if self.state != self.STATE_OPEN:
            return False
        writes = self._writes
        if (
            writes is None
            or self._perMessageCompress is not None
            or self.send_queue
            or self.logFrames
            or self.trackedTimings
            or self.maskServerFrames
            or 0 < self.autoFragmentSize < len(payload)
            or 0 < self.maxMessagePayloadSize < len(payload)
        ):
            self.sendMessage(payload, binary)
            return True
        # What sendMessage would send: one final, unmasked, uncompressed frame.
        self.sendData(frame_header(len(payload), binary) + payload)
        return True


class PlatformServer(Server):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._outer_ready_callable = self.ready_callable
        # Called by Server.run() once the factories exist, before the reactor runs.
        self.ready_callable = self._configure_factories
        self._flusher: WriteFlusher | None = None

    def _configure_factories(self):
        use_fast_unmasking()
        self.ws_factory.protocol = PlatformWebSocketProtocol
        self.ws_factory.setProtocolOptions(failByDrop=False)
        if self._outer_ready_callable is not None:
            self._outer_ready_callable()

    def create_application(self, protocol, scope):
        if scope.get("type") == "websocket" and isinstance(protocol, PlatformWebSocketProtocol):
            flusher = self._write_flusher()
            if flusher is not None:
                protocol.coalesce_writes(flusher)
            extensions = scope.setdefault("extensions", {})
            extensions[SEND_FRAME] = {"send": partial(self._send_frame, protocol)}
        return super().create_application(protocol, scope)

    def _write_flusher(self) -> WriteFlusher | None:
        try:
            loop = asyncio.get_running_loop()  # the asyncio reactor's loop: create_application runs on it
        except RuntimeError:
            return None
        flusher = self._flusher
        if flusher is None or flusher._loop is not loop:
            flusher = self._flusher = WriteFlusher(loop)
        return flusher

    def _send_frame(self, protocol: PlatformWebSocketProtocol, payload: bytes, binary: bool) -> bool:
        # What Server.handle_reply checks before handing a message to the protocol.
        connection = self.connections.get(protocol)
        if connection is None or connection.get("disconnected"):
            return False
        return protocol.send_frame(payload, binary)

    def kill_all_applications(self):
        """Called by the reactor before it shuts down: drain first, then cancel what is left."""
        from platform_core.lifecycle import run_shutdown_hooks

        drained = defer.Deferred.fromFuture(asyncio.ensure_future(run_shutdown_hooks()))
        drained.addErrback(lambda failure: logger.error("Graceful shutdown failed: %s", failure.value))
        drained.addBoth(lambda _: super(PlatformServer, self).kill_all_applications())
        return drained


class PlatformCommandLineInterface(CommandLineInterface):
    server_class = PlatformServer


def main() -> None:
    PlatformCommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
