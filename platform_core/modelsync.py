"""Every server process serves what the registry says, within seconds of a change, on every host.

How a process hears of a change:

1. The registry sends ``inference.signals.catalog_changed`` once the change
   has committed, in whichever process made it (the admin, the deployment
   API, a ``manage.py`` command). :func:`announce` passes it on with
   ``group_send`` to the channel-layer group :data:`GROUP`.
2. Each server process's :class:`ModelSync` is a member of that group; a
   message asks its pool to reconcile (``InferenceService.reconcile``).
3. A periodic reconcile every ``PLATFORM_MODEL_RECONCILE_S`` is the safety
   net: a process that missed the message (Redis was down, or it restarted
   meanwhile) converges anyway. Reconciling when nothing changed costs one
   small query.

With the in-memory channel layer (no ``REDIS_URL``) a group spans one process
only: a change made elsewhere (a ``manage.py`` command, another server
process) reaches a server through the periodic reconcile alone.

The channel layer may be unavailable: sending is bounded by a timeout and
logged, the listener retries with backoff, and serving never waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)

GROUP = "platform.models"
MESSAGE_TYPE = "catalog.changed"
#: The longest the process that made a change waits to tell the others: the change has committed,
#: and the periodic reconcile tells them anyway if the channel layer is down.
ANNOUNCE_TIMEOUT_S = 2.0
#: Group memberships expire in channels-redis, and a restarted Redis forgets them: join again this often.
REJOIN_INTERVAL_S = 60.0
#: Backoff of the listener while the channel layer is unavailable.
RETRY_MIN_S, RETRY_MAX_S = 0.5, 30.0

Reconcile = Callable[[], Awaitable[Any]]


class ModelSync:
    """One server process's listener on :data:`GROUP`, its periodic reconcile, and the worker that runs them.

    Requests for a reconcile coalesce: while one runs, any number of new
    requests make one more run after it, so a burst of changes costs at most
    two reconciles.
    """

    def __init__(self, reconcile: Reconcile, *, interval_s: float, group: str = GROUP) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be a positive number of seconds, not {interval_s!r}.")
        self.reconcile = reconcile
        self.interval_s = interval_s
        self.group = group
        #: Reconciles run so far, for tests and the logs.
        self.runs = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wanted: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._channel: str | None = None
        self._failures = 0

    @property
    def running(self) -> bool:
        return any(not task.done() for task in self._tasks)

    def start(self) -> None:
        """Start listening and reconciling on the running event loop, with one reconcile at once."""
        if self.running:
            return
        self._loop = loop = asyncio.get_running_loop()
        self._wanted = asyncio.Event()
        self._tasks = [
            loop.create_task(self._work(self._wanted), name="model-sync:reconcile"),
            loop.create_task(self._tick(), name="model-sync:periodic"),
            loop.create_task(self._listen(), name="model-sync:listen"),
        ]
        self.request()

    async def stop(self) -> None:
        """Stop listening and reconciling (a reconcile under way is cancelled between steps)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        layer = get_channel_layer()
        if layer is not None and self._channel is not None:
            try:
                async with asyncio.timeout(ANNOUNCE_TIMEOUT_S):
                    await layer.group_discard(self.group, self._channel)
            except Exception:
                logger.debug("Could not leave the group %s", self.group, exc_info=True)

    def request(self) -> None:
        """Ask for a reconcile soon; called on the event loop."""
        if self._wanted is not None:
            self._wanted.set()

    def request_threadsafe(self) -> None:
        """Ask for a reconcile soon, from any thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.request)

    async def _work(self, wanted: asyncio.Event) -> None:
        while True:
            await wanted.wait()
            wanted.clear()
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database may be down for a while: the next tick tries again
                logger.warning("Could not reconcile the served models with the registry", exc_info=True)
            self.runs += 1

    async def _tick(self) -> None:
        rejoined = time.monotonic()
        while True:
            await asyncio.sleep(self.interval_s)
            self.request()
            if time.monotonic() - rejoined >= REJOIN_INTERVAL_S and self._channel is not None:
                rejoined = time.monotonic()
                try:
                    await self._join(self._channel)
                except Exception:  # the listener reports a channel layer that is down
                    pass

    async def _listen(self) -> None:
        layer = get_channel_layer()
        if layer is None:
            logger.warning("No channel layer: model changes reach this process by the periodic reconcile only.")
            return
        delay = RETRY_MIN_S
        while True:
            try:
                if self._channel is None:
                    self._channel = await layer.new_channel()
                await self._join(self._channel)
                delay = RETRY_MIN_S
                while True:
                    message = await layer.receive(self._channel)
                    if message.get("type") == MESSAGE_TYPE:
                        self.request()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failures += 1
                if self._failures == 1 or self._failures % 20 == 0:
                    logger.warning("Model-change messages are not reaching this process (%s: %s); retrying in "
                                   "%.1f s, the periodic reconcile goes on", type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def _join(self, channel: str) -> None:
        """Join (or join again) the group; raises when the channel layer does not answer in time."""
        layer = get_channel_layer()
        async with asyncio.timeout(ANNOUNCE_TIMEOUT_S):
            await layer.group_add(self.group, channel)
        if self._failures:
            logger.info("Listening for model changes again after %d failures", self._failures)
            self._failures = 0
            # Messages may have been missed meanwhile.
            self.request()


#: This server process's sync, once started.
_sync: ModelSync | None = None
# Announcements sent from the event loop, kept until they are done.
_announcing: set[asyncio.Task[None]] = set()


def start(reconcile: Reconcile, interval_s: float) -> ModelSync:
    """Start this process's sync on the running event loop (once)."""
    global _sync
    if _sync is None or not _sync.running:
        _sync = ModelSync(reconcile, interval_s=interval_s)
        _sync.start()
    return _sync


async def stop() -> None:
    """Shutdown hook: stop following the registry."""
    if _sync is not None:
        await _sync.stop()


def announce(sender: Any = None, *, model: str = "", action: str = "", **kwargs: Any) -> None:
    """Receiver of ``catalog_changed``: tell every server process, this one included, to reconcile.

    Runs after the change committed, in the process that made it, from a
    thread or from the event loop; it never raises (the change is made) and
    never waits for long.
    """
    message = {"type": MESSAGE_TYPE, "model": model, "action": action}
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        # On the event loop (an async view): send without making it wait.
        if _sync is not None:
            _sync.request()
        task = loop.create_task(_send(message), name="model-sync:announce")
        _announcing.add(task)
        task.add_done_callback(_announcing.discard)
        return
    if _sync is not None:
        # A thread of a server process (the admin): its own pool need not wait for the channel layer.
        _sync.request_threadsafe()
    try:
        async_to_sync(_send)(message)
    except Exception:
        logger.warning("Could not announce the change to %s", model, exc_info=True)


async def _send(message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async with asyncio.timeout(ANNOUNCE_TIMEOUT_S):
            await layer.group_send(GROUP, message)
    except Exception as exc:
        logger.warning("Could not tell the server processes that %s changed (%s: %s); they reconcile within "
                       "PLATFORM_MODEL_RECONCILE_S anyway", message.get("model"), type(exc).__name__, exc)
