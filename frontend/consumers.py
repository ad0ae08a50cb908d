"""``/ws/v1/dashboard/``: the whole platform's live statistics, for staff browsers.

The consumer joins the channel-layer group every process publishes its
snapshot to (``monitoring.livestats``) and, once a second, sends its browser one
message with all the live processes merged (``frontend.merge``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from monitoring import events, livestats
from monitoring.livestats import DASHBOARD_GROUP
from streaming.draining import Drain

from .merge import PlatformView

logger = logging.getLogger(__name__)

CLOSE_GOING_AWAY = 1001
CLOSE_NOT_LOGGED_IN = 4401
CLOSE_NOT_STAFF = 4403
# How long a shutdown waits for a browser's half of the closing handshake.
CLOSE_HANDSHAKE_S = 2.0
# Messages go out half a second after the whole second, when every process's
# snapshot of that second (published on the whole second) has arrived.
SEND_PHASE_S = 0.5
# Right after connecting, messages wait this long for the first snapshots
# rather than show a platform of zeros that the next message corrects.
FIRST_SNAPSHOTS_S = 2.5


#: Open dashboards of this process, closed with 1001 when it shuts down.
live_dashboards: weakref.WeakSet[DashboardConsumer] = weakref.WeakSet()


async def close_dashboards() -> None:
    """Shutdown hook: close every dashboard with 1001, so that its browser reconnects, to another server."""
    await asyncio.gather(*(dashboard.going_away() for dashboard in list(live_dashboards)), return_exceptions=True)


class DashboardConsumer(AsyncJsonWebsocketConsumer):
    """Forwards the merged statistics of every process to one staff browser, once a second."""

    interval_s = 1.0

    async def connect(self) -> None:
        """Called when a handshake with an allowed Origin arrives; the session's user is in the scope."""
        self.joined = False
        self.ticker: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()
        # Accepted first, then closed: a browser sees the close code (and can
        # send its user to the login page), where a refused handshake says nothing.
        await self.accept()
        if Drain.started:  # as the prediction stream does: 1001, the browser tries again (elsewhere)
            await self.close(CLOSE_GOING_AWAY)
            return
        live_dashboards.add(self)
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(CLOSE_NOT_LOGGED_IN)
            return
        if not (user.is_active and user.is_staff):
            await self.close(CLOSE_NOT_STAFF)
            return
        self.view = PlatformView()
        await self.channel_layer.group_add(DASHBOARD_GROUP, self.channel_name)
        self.joined = True
        events.connection_change(+1)
        livestats.aggregator.dashboard_opened()
        await self.send_json({
            "type": "hello",
            "user": user.get_username(),
            "interval_s": self.interval_s,
            "process": livestats.aggregator.process_id,
            "publishing": livestats.aggregator.enabled,
        })
        self.ticker = asyncio.ensure_future(self._send_every_second())

    async def disconnect(self, code: int) -> None:
        """Called when the socket closes, from either side."""
        self.closed.set()
        live_dashboards.discard(self)
        if self.ticker is not None:
            self.ticker.cancel()
        if self.joined:
            self.joined = False
            await self.channel_layer.group_discard(DASHBOARD_GROUP, self.channel_name)
            livestats.aggregator.dashboard_closed()
            events.connection_change(-1)

    async def going_away(self) -> None:
        """Close with 1001 and let the closing handshake finish: once the server stops, unsent frames are lost."""
        await self.close(CLOSE_GOING_AWAY)
        try:
            async with asyncio.timeout(CLOSE_HANDSHAKE_S):
                await self.closed.wait()
        except TimeoutError:
            pass

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any) -> None:
        """The browser has nothing to say on this socket; whatever it sends is ignored."""

    async def dashboard_snapshot(self, message: dict[str, Any]) -> None:
        """Called for every process's snapshot from the channel layer, about once a second each."""
        if self.joined:
            self.view.add(message["snapshot"])

    async def _send_every_second(self) -> None:
        connected = time.monotonic()
        try:
            while True:
                now = time.time()
                await asyncio.sleep((SEND_PHASE_S - now) % self.interval_s or self.interval_s)
                if not self.view.process_count and time.monotonic() - connected < FIRST_SNAPSHOTS_S:
                    continue
                await self.send_json(self.view.message())
        except asyncio.CancelledError:
            raise
        except Exception:
            # The socket went away between two messages: disconnect() follows.
            logger.debug("Stopped sending dashboard statistics", exc_info=True)
