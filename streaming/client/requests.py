"""The client's requests not yet answered: which wait for a send slot, which are out on the current connection.

Rules:

- a request stays here until it has its one answer (a reply, or an error the
  client gives up on); a reply whose request is gone (answered, cancelled) is
  dropped;
- at most ``window`` requests are out on a connection at once: the server
  answers ``overloaded`` beyond its ``max_in_flight``, so the rest wait here;
- when a connection ends, every request out on it goes back to the front of
  the queue, oldest first, to be sent again on the next connection;
- a cancelled request leaves at once, but its slot is held until its reply
  arrives or its connection ends: the server still counts it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Request:
    """One request: its id, its encoded frame, the future its caller awaits, and how often it was retried."""

    id: int
    frame: str | bytes
    future: asyncio.Future[dict[str, Any]]
    retries: int = 0


class RequestBook:
    """Requests not yet answered, in the order they were made."""

    def __init__(self, window: int = 256) -> None:
        self.window = window
        self._requests: dict[int, Request] = {}
        self._queued: deque[int] = deque()
        self._out: set[int] = set()

    def __len__(self) -> int:
        return len(self._requests)

    def __iter__(self) -> Iterator[Request]:
        return iter(list(self._requests.values()))

    def add(self, request: Request) -> None:
        """A new request, to be sent when a slot is free."""
        self._requests[request.id] = request
        self._queued.append(request.id)

    def queue_again(self, request_id: int) -> None:
        """Send this request again when a slot is free (after a ``retry_after_ms``)."""
        if request_id in self._requests:
            self._queued.append(request_id)

    def next_to_send(self) -> Request | None:
        """The oldest queued request, now counted as out, if a slot is free."""
        while self._queued and len(self._out) < self.window:
            request = self._requests.get(self._queued.popleft())
            if request is not None and not request.future.done():
                self._out.add(request.id)
                return request
        return None

    def answered(self, request_id: Any) -> Request | None:
        """The request a reply with ``request_id`` answers (None if it is gone); frees its slot."""
        if not isinstance(request_id, int) or isinstance(request_id, bool):
            return None
        self._out.discard(request_id)
        return self._requests.get(request_id)

    def done(self, request_id: int) -> None:
        """The request has its answer, or its caller stopped waiting."""
        self._requests.pop(request_id, None)

    def connection_lost(self) -> int:
        """Put every request that was out on the lost connection back in front of the queue; return how many."""
        lost = sorted(rid for rid in self._out if rid in self._requests)
        self._out.clear()
        self._queued.extendleft(reversed(lost))
        return len(lost)

    def fail_all(self, error: BaseException) -> None:
        """End every request with ``error`` (the client is closing, or cannot reach the server any more)."""
        for request in list(self._requests.values()):
            if not request.future.done():
                request.future.set_exception(error)
        self._requests.clear()
        self._queued.clear()
        self._out.clear()
