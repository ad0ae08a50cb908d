"""Shutdown hooks: what runs, in order, before the server lets go of its connections.

``platform_core.server`` runs them when daphne's reactor begins to stop
(SIGTERM or SIGINT): streaming answers each connection's requests in flight
and closes it with 1001, then monitoring flushes its prediction log.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

ShutdownHook = Callable[[], Awaitable[None]]

_hooks: list[tuple[int, ShutdownHook]] = []


def on_shutdown(hook: ShutdownHook, order: int = 100) -> None:
    """Run ``hook`` when the server shuts down; lower ``order`` runs first."""
    if all(existing is not hook for _, existing in _hooks):
        _hooks.append((order, hook))
        _hooks.sort(key=lambda item: item[0])


async def run_shutdown_hooks() -> None:
    logger.info("Shutting down: answering requests in flight, then closing connections")
    for _, hook in list(_hooks):
        try:
            await hook()
        except Exception:
            logger.exception("Shutdown hook %r failed", hook)
