"""Closing the connections of revoked and expired API keys while they are open.

A key is checked when a connection authenticates; afterwards this watch asks
the database, once every ``PLATFORM_KEY_CHECK_INTERVAL_S`` while keyed
connections are open, which of their keys are no longer active, and closes
those connections with 4401. One query per interval for the whole process,
whatever the number of connections; none while no keyed connection is open.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from channels.db import database_sync_to_async
from django.conf import settings

logger = logging.getLogger(__name__)

#: Closes one connection whose key is no longer active.
Closer = Callable[[], Awaitable[None]]


@database_sync_to_async
def inactive_keys(key_ids: Iterable[int]) -> set[int]:
    """Those of ``key_ids`` that are revoked, expired or deleted."""
    from .models import APIKey

    wanted = set(key_ids)
    active = set(APIKey.objects.active().filter(pk__in=wanted).values_list("pk", flat=True))
    return wanted - active


class KeyWatch:
    """The open connections of each key in this process, and the task that checks their keys."""

    def __init__(self) -> None:
        self._closers: dict[int, dict[int, Closer]] = {}
        self._task: asyncio.Task[None] | None = None

    def watch(self, key_id: int, connection: object, close: Closer) -> None:
        """Call ``close()`` once ``key_id`` is revoked or expires; until :meth:`forget`."""
        self._closers.setdefault(key_id, {})[id(connection)] = close
        task = self._task
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            self._task = asyncio.get_running_loop().create_task(self._check_forever(), name="api-key-watch")

    def forget(self, key_id: int, connection: object) -> None:
        closers = self._closers.get(key_id)
        if closers is not None:
            closers.pop(id(connection), None)
            if not closers:
                del self._closers[key_id]

    async def check(self) -> int:
        """Close the connections of every watched key that is no longer active; returns how many."""
        if not self._closers:
            return 0
        closed = 0
        for key_id in await inactive_keys(list(self._closers)):
            for close in list(self._closers.pop(key_id, {}).values()):
                closed += 1
                try:
                    await close()
                except Exception:  # one connection's failure must not spare the others
                    logger.exception("Could not close a connection of revoked key %s", key_id)
        if closed:
            logger.info("Closed %d connections whose API key was revoked or expired", closed)
        return closed

    async def _check_forever(self) -> None:
        while self._closers:
            await asyncio.sleep(settings.PLATFORM_KEY_CHECK_INTERVAL_S)
            try:
                await self.check()
            except Exception:  # the database may be down for a while: try again next time
                logger.warning("Could not check the API keys of open connections", exc_info=True)
        self._task = None


#: This process's watch.
key_watch = KeyWatch()
