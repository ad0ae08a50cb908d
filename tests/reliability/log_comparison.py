"""What the clients received next to what the prediction log says, id by id: the helpers of the log-truth tests.

A :class:`StreamingClient` keeps a window of requests in flight on one
connection until it is told to stop or the server closes the connection,
remembering every id it sent, every reply it got (its type and error code)
and the close code. :func:`compare` puts that next to the records of the
server's database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import psycopg
import websockets
from websockets.exceptions import ConnectionClosed

from tests.support.daphne import DaphneServer
from tests.support.services import manage

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
# Every this-many-th request has a row of three features, refused as invalid_input:
# the log must tell the client's errors from its predictions.
INVALID_EVERY = 97
SHUTTING_DOWN = "The server is shutting down"


def api_key(server: DaphneServer, name: str, *options: str) -> str:
    return manage("create_api_key", name, *options, env=server.env).stdout.strip()


class Reply(NamedTuple):
    """What one reply told the client."""

    type: str
    #: The error code of an error reply.
    code: str | None
    message: str
    retry_after_ms: int | None

    @property
    def outcome(self) -> str:
        """The outcome its record must carry."""
        return "ok" if self.type == "prediction" else str(self.code)


class StreamingClient:
    """One authenticated connection that streams pipelined requests and remembers what came back.

    At most ``depth`` requests wait for their reply at a time; ``limit``
    bounds how many are sent in all, ``rate_per_s`` how fast.
    """

    def __init__(self, server: DaphneServer, key: str, prefix: str, *, depth: int, limit: int | None = None,
                 rate_per_s: float | None = None) -> None:
        self.server, self.key, self.prefix = server, key, prefix
        self.depth, self.limit, self.rate_per_s = depth, limit, rate_per_s
        #: Every id sent, in order.
        self.sent: list[str] = []
        self.replies: dict[str, Reply] = {}
        #: Ids answered more than once, and replies to ids never sent.
        self.repeated: list[str] = []
        self.strays: list[Any] = []
        self.close_code: int | None = None
        self._window = asyncio.Semaphore(depth)

    @property
    def unanswered(self) -> list[str]:
        return [rid for rid in self.sent if rid not in self.replies]

    async def run(self, stop: asyncio.Event, *, settle_s: float = 30.0) -> None:
        """Stream until the server closes the connection, or until ``stop`` is set and every reply is in."""
        async with websockets.connect(
            self.server.ws_url + "/ws/v1/predict/", additional_headers={"Authorization": f"Bearer {self.key}"},
            max_size=2**24, max_queue=None,
        ) as ws:
            ready = json.loads(await ws.recv())
            assert ready["type"] == "ready", ready
            sender = asyncio.create_task(self._send(ws, stop))
            receiver = asyncio.create_task(self._receive(ws))
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait([receiver, stopped], return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            deadline = time.monotonic() + settle_s
            while not receiver.done() and len(self.replies) < len(self.sent) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if not receiver.done():
                await ws.close()
            await receiver
            self.close_code = ws.close_code

    async def _send(self, ws: Any, stop: asyncio.Event) -> None:
        started = time.monotonic()
        with contextlib.suppress(ConnectionClosed):
            while not stop.is_set() and (self.limit is None or len(self.sent) < self.limit):
                await self._window.acquire()
                if self.rate_per_s:
                    await asyncio.sleep(max(0.0, started + len(self.sent) / self.rate_per_s - time.monotonic()))
                number = len(self.sent)
                rid = f"{self.prefix}-{number}"
                row = IRIS_ROW[:3] if number % INVALID_EVERY == INVALID_EVERY - 1 else IRIS_ROW
                self.sent.append(rid)
                await ws.send(json.dumps({"type": "predict", "id": rid, "model": "iris", "inputs": [row]}))

    async def _receive(self, ws: Any) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                body = json.loads(message)
                rid = body.get("id")
                if body.get("type") not in ("prediction", "error") or not isinstance(rid, str):
                    self.strays.append(body)
                    continue
                error = body.get("error") or {}
                reply = Reply(body["type"], error.get("code"), error.get("message", ""), error.get("retry_after_ms"))
                if not rid.startswith(f"{self.prefix}-"):
                    self.strays.append(body)
                elif rid in self.replies:
                    self.repeated.append(rid)
                else:
                    self.replies[rid] = reply
                    self._window.release()


async def stream(clients: Iterable[StreamingClient], stop: asyncio.Event) -> None:
    await asyncio.gather(*(client.run(stop) for client in clients))


async def until_answered(clients: list[StreamingClient], replies: int, timeout_s: float = 30.0) -> None:
    """Wait until each client has had ``replies`` replies: the load is flowing."""
    deadline = time.monotonic() + timeout_s
    while any(len(client.replies) < replies for client in clients):
        if time.monotonic() > deadline:
            raise AssertionError(f"Replies did not flow: {[len(client.replies) for client in clients]}")
        await asyncio.sleep(0.02)


# -- the log's side ---------------------------------------------------------------------------------


class Record(NamedTuple):
    """What the prediction log holds of one request."""

    request_id: str
    outcome: str
    #: Whether the request reached a model (a refused frame has no version).
    accepted: bool
    error: str


def logged(database_url: str) -> list[Record]:
    """Every record of the server's database."""
    with psycopg.connect(database_url, connect_timeout=5) as connection:
        rows = connection.execute(
            "SELECT request_id, outcome, version IS NOT NULL, error FROM monitoring_predictionrecord"
        ).fetchall()
    return [Record(*row) for row in rows]


@dataclass
class Comparison:
    """The log next to what the clients received."""

    #: Per id, what the client got and what the log holds.
    replies: dict[str, Reply]
    records: dict[str, list[Record]]
    sent: set[str]
    missing: list[str] = field(default_factory=list)
    twice: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, str, str]] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    #: Records of ids whose reply never reached the client, with their outcome.
    unanswered_logged: dict[str, str] = field(default_factory=dict)

    @property
    def ok_unreceived(self) -> list[str]:
        """Ids the log says were answered with a prediction the client never received."""
        return sorted(rid for rid, outcome in self.unanswered_logged.items() if outcome == "ok")

    def assert_every_reply_logged_once(self) -> None:
        assert not (self.missing or self.twice or self.mismatched or self.unexpected), (
            f"{len(self.replies)} replies received: {len(self.missing)} without a record {self.missing[:5]}, "
            f"{len(self.twice)} with several {self.twice[:5]}, {len(self.mismatched)} with another outcome "
            f"(id, client got, log says) {self.mismatched[:5]}, {len(self.unexpected)} records of ids never "
            f"sent {self.unexpected[:5]}"
        )

    def summary(self) -> str:
        outcomes: dict[str, int] = {}
        for outcome in self.unanswered_logged.values():
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        return (f"{len(self.sent)} sent, {len(self.replies)} replies, {sum(map(len, self.records.values()))} "
                f"records; records of unanswered ids: {outcomes or 'none'}")


def compare(clients: Iterable[StreamingClient], records: list[Record]) -> Comparison:
    clients = list(clients)
    replies = {rid: reply for client in clients for rid, reply in client.replies.items()}
    by_id: dict[str, list[Record]] = {}
    for record in records:
        by_id.setdefault(record.request_id, []).append(record)
    comparison = Comparison(replies, by_id, {rid for client in clients for rid in client.sent})
    for rid, found in by_id.items():
        if rid not in comparison.sent:
            comparison.unexpected.append(rid)
        if len(found) > 1:
            comparison.twice.append(rid)
        if rid not in replies:
            comparison.unanswered_logged[rid] = found[0].outcome
    for rid, reply in replies.items():
        found = by_id.get(rid)
        if not found:
            comparison.missing.append(rid)
        elif found[0].outcome != reply.outcome:
            comparison.mismatched.append((rid, reply.outcome, found[0].outcome))
    return comparison


def wait_for_replies_logged(database_url: str, clients: list[StreamingClient], timeout_s: float) -> list[Record]:
    """Poll the database until every reply the clients received has a record, or ``timeout_s`` passes."""
    wanted = {rid for client in clients for rid in client.replies}
    deadline = time.monotonic() + timeout_s
    while True:
        records = logged(database_url)
        if wanted <= {record.request_id for record in records} or time.monotonic() > deadline:
            return records
        time.sleep(0.25)
