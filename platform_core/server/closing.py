"""How connections close: the protocol's close codes, 1009 for oversized frames, a graceful drain at shutdown.

Why, and when each part can go:

- The application closes with 1001 (going away), 1008 (policy), 1009 (too
  big) and 1011 (internal error), as the protocol promises; daphne passes
  the code to autobahn's ``sendClose``, which accepts only 1000 and
  3000-4999 from an application. Can go when autobahn's ``sendClose`` (or
  daphne's ``serverClose``) sends these codes.
- A frame or message over ``PLATFORM_MAX_FRAME_BYTES`` is answered with
  1009; autobahn's ``failByDrop``, on by default in daphne's factory, drops
  the TCP connection without a closing handshake instead. The frame and the
  message limit both follow that one setting (daphne's two flags default to
  1 MiB frames). Can go when daphne lets the factory's options be set, or
  stops failing by drop.
- On SIGTERM or SIGINT the server stops listening, then the shutdown hooks
  of ``platform_core.lifecycle`` run before daphne cancels the applications:
  each connection's requests in flight are answered and it is closed with
  1001, the prediction log is flushed. Can go when daphne runs an ASGI lifespan shutdown (or another
  hook) before it cancels the applications.
"""

from __future__ import annotations

import asyncio
import logging

from autobahn.websocket.protocol import WebSocketProtocol as AutobahnWebSocketProtocol
from autobahn.websocket.protocol import WebSocketServerFactory
from autobahn.websocket.protocol import WebSocketServerProtocol as AutobahnWebSocketServerProtocol
from daphne.server import Server
from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol
from twisted.internet import defer

from platform_core.server.internals import Attribute, Listed, Mentioned, Parameter, require

logger = logging.getLogger(__name__)

INTERNALS = (
    Attribute("autobahn", AutobahnWebSocketProtocol, "sendCloseFrame"),
    Parameter("autobahn", AutobahnWebSocketProtocol, "sendCloseFrame", "code"),
    Parameter("autobahn", AutobahnWebSocketProtocol, "sendCloseFrame", "isReply"),
    Listed("autobahn", AutobahnWebSocketServerProtocol, "CONFIG_ATTRS", "failByDrop"),
    Parameter("autobahn", WebSocketServerFactory, "setProtocolOptions", "failByDrop"),
    Parameter("autobahn", WebSocketServerFactory, "setProtocolOptions", "allowNullOrigin"),
    Parameter("autobahn", WebSocketServerFactory, "setProtocolOptions", "maxFramePayloadSize"),
    Parameter("autobahn", WebSocketServerFactory, "setProtocolOptions", "maxMessagePayloadSize"),
    # The application's websocket.close reaches the protocol through serverClose.
    Attribute("daphne", WebSocketProtocol, "serverClose"),
    Mentioned("daphne", WebSocketProtocol, "handle_reply", "serverClose"),
    # kill_all_applications is what daphne's reactor calls before it shuts down.
    Attribute("daphne", Server, "kill_all_applications"),
    Mentioned("daphne", Server, "run", "kill_all_applications"),
    # listen_success is given each listening port, which the drain stops.
    Attribute("daphne", Server, "listen_success"),
    Mentioned("daphne", Server, "run", "listen_success"),
)


def check_internals() -> None:
    """Raise IncompatibleDependency if the installed daphne or autobahn lacks what this patch relies on."""
    require(__name__, INTERNALS)


# Close codes of RFC 6455 that the protocol sends (going away, policy, too
# big, internal error) but that autobahn's sendClose() reserves for itself.
PROTOCOL_CLOSE_CODES = frozenset({1001, 1008, 1009, 1011})


def configured_frame_limit() -> int | None:
    """``PLATFORM_MAX_FRAME_BYTES`` of the application's Django settings; None for an application without it."""
    from django.conf import settings

    if not settings.configured:
        return None
    return getattr(settings, "PLATFORM_MAX_FRAME_BYTES", None)


def answer_oversized_frames(factory: WebSocketFactory, max_frame_bytes: int | None) -> None:
    """Make ``factory``'s connections close with 1009 past ``max_frame_bytes`` instead of dropping TCP.

    ``max_frame_bytes`` (None: daphne's flags) limits a frame and a whole message alike.
    """
    options: dict = {"failByDrop": False}
    if max_frame_bytes is not None:
        options["maxMessagePayloadSize"] = options["maxFramePayloadSize"] = max_frame_bytes
    # setProtocolOptions resets allowNullOrigin to False unless it is given:
    # daphne turns it on so that the application's Origin check answers a
    # null or file:// origin (403), not autobahn (400).
    factory.setProtocolOptions(allowNullOrigin=factory.allowNullOrigin, **options)


class CloseCodesProtocol(WebSocketProtocol):
    def serverClose(self, code=None):
        """Called when the application sends ``websocket.close``."""
        if code in PROTOCOL_CLOSE_CODES:
            self.sendCloseFrame(code=code, isReply=False)
        else:
            super().serverClose(code)


class GracefulDrainServer(Server):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._listening_ports = []

    def listen_success(self, port):
        """Called when a listening port is up: kept, to stop accepting when the drain begins."""
        self._listening_ports.append(port)
        return super().listen_success(port)

    def kill_all_applications(self):
        """Called by the reactor before it shuts down: stop accepting, drain, then cancel what is left.

        New connections are refused from here on, so that a load balancer
        sends them to another server, rather than accepted by a server that
        will not drain them.
        """
        from platform_core.lifecycle import run_shutdown_hooks

        for port in self._listening_ports:
            port.stopListening()
        drained = defer.Deferred.fromFuture(asyncio.ensure_future(run_shutdown_hooks()))
        drained.addErrback(lambda failure: logger.error("Graceful shutdown failed: %s", failure.value))
        drained.addBoth(lambda _: super(GracefulDrainServer, self).kill_all_applications())
        return drained
