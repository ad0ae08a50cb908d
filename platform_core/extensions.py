"""Names of the ASGI scope extensions the platform's server offers its applications."""

#: ``scope["extensions"][SEND_FRAME]["send"](payload: bytes, binary: bool) -> bool``: send one
#: WebSocket data frame at once, without a round trip through the event loop;
#: False when the connection is no longer open. Offered by ``platform_core.server``.
SEND_FRAME = "platform.send_frame"
