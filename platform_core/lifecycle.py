"""Hooks the platform's server runs: before it sends replies, and before it lets go of its connections.

``platform_core.server`` runs the send hooks each time it sends what its
connections wrote during a pass of the event loop, before the bytes leave:
the prediction log writes its journal there, so that no reply is out before
its record is on disk. It runs the shutdown hooks, in order, when daphne's
reactor begins to stop (SIGTERM or SIGINT): streaming answers each
connection's requests in flight and closes it with 1001, then monitoring
writes its prediction log and flushes its metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

ShutdownHook = Callable[[], Awaitable[None]]
SendHook = Callable[[], None]

_hooks: list[tuple[int, ShutdownHook]] = []
#: Run on the event loop before each pass's replies are sent; each must be quick and never raise.
send_hooks: list[SendHook] = []


def before_send(hook: SendHook) -> None:
    """Run ``hook`` on the event loop before the server sends what its connections wrote."""
    if hook not in send_hooks:
        send_hooks.append(hook)


def run_send_hooks() -> None:
    for hook in send_hooks:
        try:
            hook()
        except Exception:  # a failing hook must not keep replies back
            logger.exception("Send hook %r failed", hook)


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
