"""Graceful shutdown of the prediction stream: every open connection answers what it accepted, then closes 1001."""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import TYPE_CHECKING

from django.conf import settings

if TYPE_CHECKING:
    from .consumers import PredictConsumer

logger = logging.getLogger(__name__)

#: Open prediction connections of this process, for a graceful shutdown.
live_consumers: weakref.WeakSet[PredictConsumer] = weakref.WeakSet()


class Drain:
    """Whether this process has begun its graceful shutdown.

    A connection that opens once it has (a handshake under way when the
    server stopped listening) is accepted and closed with 1001 before
    ``ready``, as 4401 and 4404 are sent: 1001 is the protocol's "server
    shutting down", which clients answer by connecting again with backoff,
    elsewhere, and a browser sees the code. Refusing the handshake instead
    would say less: daphne refuses every handshake with HTTP 403 (there is
    no 503 to send), which clients take for a permanent refusal.
    """

    started = False


async def refuse_new_connections() -> None:
    """Shutdown hook, the first to run (as the server stops listening): new connections get 1001 before ``ready``.

    The connections open by then are served on until ``drain_connections``,
    which runs after the HTTP requests in flight were answered.
    """
    Drain.started = True


async def drain_connections() -> None:
    """Shutdown hook: answer every connection's requests in flight, then close it with 1001.

    A connection that opens once the drain has begun is closed with 1001 at
    once (the consumer asks :class:`Drain`): it would not be drained, and what
    it served after the prediction log's last write would reach the database
    only when this host's journal is recovered.
    """
    Drain.started = True
    consumers = list(live_consumers)
    if consumers:
        # Requests already accepted end within their deadline: answered, or `timeout`.
        timeout_s = settings.PLATFORM_REQUEST_TIMEOUT_MS / 1000.0 + 1.0
        results = await asyncio.gather(*(consumer.drain(timeout_s) for consumer in consumers), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                logger.error("Draining a connection failed", exc_info=result)
