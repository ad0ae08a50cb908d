"""The prediction stream's transport shortcuts, for any Channels WebSocket consumer.

- ``DirectReadLoop``: a consumer ``__call__`` that reads the connection's
  messages in a loop of its own. Channels' own loop also subscribes every
  consumer to the channel layer and, for every frame, starts a task for the
  next ``receive`` and waits on it and the layer together; a consumer that is
  never sent anything through the layer can skip that wait, which costs more
  per frame than the model call of a small request.
- ``frame_sender``: the platform server's synchronous frame send (the
  ``platform.send_frame`` scope extension of ``platform_core.server``), which
  writes a reply at once from a plain callback, without a task and an awaited
  ASGI ``send``.
- ``disconnect_watch``: the platform server's callback for an HTTP client's
  disconnect (the ``platform.disconnect`` extension), which spares a request
  that waits for the model a task blocked in ``receive()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from channels.exceptions import StopConsumer

#: ``scope["extensions"][SEND_FRAME]["send"](payload: bytes, binary: bool) -> bool``: send one
#: WebSocket data frame at once, without a round trip through the event loop;
#: False when the connection is no longer open. Offered by ``platform_core.server``.
SEND_FRAME = "platform.send_frame"

FrameSender = Callable[[bytes, bool], bool]

#: ``scope["extensions"][DISCONNECT]["watch"](callback) -> unwatch``: an HTTP request's
#: ``callback`` is called when its client disconnects, without a task waiting in
#: ``receive()``; ``unwatch()`` stops that. Offered by ``platform_core.server``.
DISCONNECT = "platform.disconnect"
DisconnectWatch = Callable[[Callable[[], None]], Callable[[], None]]


class DirectReadLoop:
    """Mixin for a Channels consumer: handle each message as it is read, with no channel layer."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self._receive = receive
        self.scope = scope
        self.channel_layer = None
        self.channel_name = None
        self.base_send = send
        try:
            while True:
                await self.dispatch(await receive())  # type: ignore[attr-defined]
        except StopConsumer:
            pass

    def receive_backlog(self) -> int:
        """Messages the server received for this connection that were not read yet; 0 where it cannot tell.

        daphne hands each application the ``get`` of an ``asyncio.Queue`` as
        ``receive``; other servers may not.
        """
        queue = getattr(getattr(self, "_receive", None), "__self__", None)
        return queue.qsize() if isinstance(queue, asyncio.Queue) else 0


def frame_sender(scope: dict[str, Any]) -> FrameSender | None:
    """``send(payload, binary)`` where the server offers ``platform.send_frame``, else None (use ASGI send)."""
    extension = (scope.get("extensions") or {}).get(SEND_FRAME)
    return extension.get("send") if isinstance(extension, dict) else None


def disconnect_watch(scope: dict[str, Any]) -> DisconnectWatch | None:
    """``watch(callback)`` where the server offers ``platform.disconnect``, else None (wait in ``receive()``)."""
    extension = (scope.get("extensions") or {}).get(DISCONNECT)
    return extension.get("watch") if isinstance(extension, dict) else None
