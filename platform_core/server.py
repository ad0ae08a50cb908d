"""The platform's daphne: ``python -m platform_core.server`` takes daphne's own arguments.

Five things differ from plain ``daphne``:

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
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial

import autobahn.websocket.protocol
from daphne.cli import CommandLineInterface
from daphne.server import Server
from daphne.ws_protocol import WebSocketProtocol
from twisted.internet import defer
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


class PlatformWebSocketProtocol(WebSocketProtocol):
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
        self.sendMessage(payload, binary)
        return True


class PlatformServer(Server):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._outer_ready_callable = self.ready_callable
        # Called by Server.run() once the factories exist, before the reactor runs.
        self.ready_callable = self._configure_factories

    def _configure_factories(self):
        use_fast_unmasking()
        self.ws_factory.protocol = PlatformWebSocketProtocol
        self.ws_factory.setProtocolOptions(failByDrop=False)
        if self._outer_ready_callable is not None:
            self._outer_ready_callable()

    def create_application(self, protocol, scope):
        if scope.get("type") == "websocket" and isinstance(protocol, PlatformWebSocketProtocol):
            extensions = scope.setdefault("extensions", {})
            extensions[SEND_FRAME] = {"send": partial(self._send_frame, protocol)}
        return super().create_application(protocol, scope)

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
