"""The ASGI scope extension ``platform.send_frame``: a synchronous way to send an encoded WebSocket frame.

``scope["extensions"]["platform.send_frame"]["send"](payload, binary)``
writes ``payload`` (bytes) as a text or binary frame at once and returns
whether the connection was still open (the name is
``platform_core.extensions.SEND_FRAME``).

Why: the prediction consumer sends its replies from the callback of the
batch that answered them; through ASGI ``send`` each reply would need a task
of its own and a pass through daphne's ``handle_reply``. Under any other
server the consumer falls back to ASGI ``send``. Can go when the consumer no
longer sends from batch callbacks, or when ASGI servers offer such a send.
"""

from __future__ import annotations

from functools import partial

from autobahn.websocket.protocol import WebSocketProtocol as AutobahnWebSocketProtocol
from daphne.server import Server
from daphne.ws_protocol import WebSocketProtocol

from platform_core.server.internals import Attribute, Mentioned, require
from streaming.transport import SEND_FRAME

INTERNALS = (
    Attribute("daphne", Server, "create_application"),
    # Server.connections maps each protocol to its details; a closed
    # connection is marked "disconnected", which handle_reply checks.
    Mentioned("daphne", Server, "run", "connections"),
    Mentioned("daphne", Server, "handle_reply", "disconnected"),
    Attribute("autobahn", AutobahnWebSocketProtocol, "STATE_OPEN"),
    Mentioned("autobahn", AutobahnWebSocketProtocol, "_connectionMade", "state"),
    Attribute("autobahn", AutobahnWebSocketProtocol, "sendMessage"),
)


def check_internals() -> None:
    """Raise IncompatibleDependency if the installed daphne or autobahn lacks what this patch relies on."""
    require(__name__, INTERNALS)


class SendFrameProtocol(WebSocketProtocol):
    def send_frame(self, payload: bytes, binary: bool) -> bool:
        """Send one data frame of an accepted connection; False once it is closing or closed."""
        if self.state != self.STATE_OPEN:
            return False
        self.sendMessage(payload, binary)
        return True


class SendFrameServer(Server):
    def create_application(self, protocol, scope):
        """Called when a connection's ASGI application is about to be created: offers ``platform.send_frame``."""
        if scope.get("type") == "websocket" and isinstance(protocol, SendFrameProtocol):
            extensions = scope.setdefault("extensions", {})
            extensions[SEND_FRAME] = {"send": partial(self._send_frame, protocol)}
        return super().create_application(protocol, scope)

    def _send_frame(self, protocol: SendFrameProtocol, payload: bytes, binary: bool) -> bool:
        # What Server.handle_reply checks before handing a message to the protocol.
        connection = self.connections.get(protocol)
        if connection is None or connection.get("disconnected"):
            return False
        return protocol.send_frame(payload, binary)
