"""Open prediction connections hear of a change to the catalog their key sees, unasked.

The protocol: the server sends ``{"type": "models", "models": {...}}`` whenever
the catalog a key sees changes (a version activated or rolled back, a model
added or retired), the complete catalog, which the client puts in place of
its own. The pool reports each change to one model's catalog entry;
``platform_core.wiring`` hands it :func:`push_catalog`. Every open,
authenticated connection whose key may use that model is sent its key's
catalog, as a text frame like ``ready``; a key that may not use the model sees
no change and is sent nothing. Requests already sent are answered by the
version that accepted them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from inference.swaps import CatalogChange

from . import protocol
from .draining import live_consumers

if TYPE_CHECKING:
    from .consumers import PredictConsumer

logger = logging.getLogger(__name__)

# Sends still running, kept so that they are not collected before they finish.
_sending: set[asyncio.Task[None]] = set()


def push_catalog(change: CatalogChange) -> None:
    """Catalog observer, called on the event loop: send the catalog to each connection whose key sees the change."""
    frames: dict[tuple[int, frozenset[str] | None], str] = {}
    sends: list[tuple[PredictConsumer, str]] = []
    for consumer in list(live_consumers):
        client = consumer.client
        if client is None or not consumer.deliverable():
            continue  # not authenticated yet: its `ready` will carry the new catalog
        if client.models is not None and change.model not in client.models:
            continue
        # One catalog per key's view: thousands of connections of a few keys share a handful.
        view = (id(consumer.service), client.models)
        frame = frames.get(view)
        if frame is None:
            message = {"type": "models", "models": consumer.service.catalog(client.models)}
            frame = frames[view] = protocol.encode_bytes(message, False).decode()
        sends.append((consumer, frame))
    if sends:
        task = asyncio.get_running_loop().create_task(_send_all(sends), name="catalog-push")
        _sending.add(task)
        task.add_done_callback(_sending.discard)


async def _send_all(sends: Iterable[tuple[PredictConsumer, str]]) -> None:
    pairs = list(sends)
    results = await asyncio.gather(*(consumer.send(text_data=frame) for consumer, frame in pairs),
                                   return_exceptions=True)
    failed = sum(1 for result in results if isinstance(result, BaseException))
    if failed:  # connections that closed meanwhile
        logger.info("Could not send the new model catalog to %d of %d connections", failed, len(pairs))
