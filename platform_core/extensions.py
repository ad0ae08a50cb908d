"""Names of the ASGI scope extensions the platform's server offers its applications.

The application side declares what it uses (``streaming.transport``); the
server, above it, offers it under the same name.
"""

from streaming.transport import SEND_FRAME

__all__ = ["SEND_FRAME"]
