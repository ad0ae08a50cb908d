"""The graceful drain through a real daphne process: new connections are refused, open ones answered, then 1001.

A connection that holds requests keeps the drain going; once the server
reports it is no longer ready, a new WebSocket connection must not be served
(no ``ready``): a new one is refused at the socket, and a handshake that was
under way when the drain began is accepted and closed with 1001 before any
message, so that their clients connect elsewhere, while the open connection
gets every reply it was owed and then 1001.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tests.frontend.conftest import create_user, login
from tests.support.processes import wait_until

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
# A busy model waits up to PLATFORM_MAX_DELAY_MS (at most half a request's deadline) for a
# fuller batch: a request queued behind a full one is answered that long after it arrived,
# which keeps the drain going long after the new connection was tried.
FULL_BATCH_ROWS, BATCH_WAIT_MS = 256, 2000
# A handshake sent in two parts: the connection is open before the drain, the upgrade completes during it.
HANDSHAKE_START = b"GET /ws/v1/predict/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
HANDSHAKE_END = (b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
CLOSE_OPCODE = 0x8


def ready_status(server) -> int | None:
    """``GET /v2/health/ready``: 200, 503 while draining, None once the server stopped listening."""
    try:
        with urllib.request.urlopen(f"{server.url}/v2/health/ready", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


async def read_until_closed(ws, replies: dict, arrived: dict) -> int | None:
    """Collect replies by id, with when each arrived, until the server closes; the close code."""
    try:
        while True:
            reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert reply["type"] in ("prediction", "error", "pong"), reply
            replies[reply["id"]] = reply
            arrived[reply["id"]] = time.monotonic()
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None


async def new_connection(server) -> tuple[str, object]:
    """Open a connection to the draining server: ("refused", error) or ("closed", (code, reason, messages))."""
    try:
        ws = await websockets.connect(server.ws_url + "/ws/v1/predict/", open_timeout=5)
    except (OSError, InvalidHandshake) as exc:
        return "refused", exc
    messages = []
    try:
        while True:
            messages.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
    except ConnectionClosed as closed:
        code = closed.rcvd.code if closed.rcvd is not None else None
        return "closed", (code, closed.rcvd.reason if closed.rcvd else "", messages)


async def finish_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[bytes, int, bytes]:
    """Send the rest of a handshake begun earlier: the status line, then the first frame's opcode and payload."""
    writer.write(HANDSHAKE_END)
    await writer.drain()
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        first, length = await asyncio.wait_for(reader.readexactly(2), 10)
        # The server's frames are not masked; a close frame's payload is under 126 bytes.
        payload = await asyncio.wait_for(reader.readexactly(length & 0x7F), 10)
    finally:
        writer.close()
    return head.split(b"\r\n")[0], first & 0x0F, payload


async def queue_behind_a_full_batch(ws, replies: dict) -> str:
    """Have a one-row request wait in the busy model's queue; its id.

    A full batch and a request behind it: when both arrive before the batch
    has run, the one behind waits for company, which a pong (sent once both
    were read) and a moment later finds it still doing. When the batch ran
    before the second request arrived, it is answered at once: try again.
    """
    for attempt in range(5):
        await ws.send(json.dumps({"id": f"full-{attempt}", "inputs": [IRIS_ROW] * FULL_BATCH_ROWS}))
        await ws.send(json.dumps({"id": f"behind-{attempt}", "inputs": [IRIS_ROW]}))
        await ws.send(json.dumps({"type": "ping", "id": f"read-{attempt}"}))
        while f"read-{attempt}" not in replies:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.2)
        if f"behind-{attempt}" not in replies:
            return f"behind-{attempt}"
    raise AssertionError("No request waited behind a full batch in five attempts.")


async def test_a_draining_server_refuses_new_connections_and_answers_the_open_one_before_1001(start_daphne):
    server = start_daphne(env={"PLATFORM_REQUIRE_API_KEY": "0", "PLATFORM_MAX_BATCH_SIZE": str(FULL_BATCH_ROWS),
                               "PLATFORM_MAX_DELAY_MS": str(BATCH_WAIT_MS)})
    replies: dict = {}
    arrived: dict = {}
    async with websockets.connect(server.ws_url + "/ws/v1/predict/iris/") as ws:
        assert json.loads(await ws.recv())["type"] == "ready"
        under_way = await asyncio.open_connection("127.0.0.1", server.port)
        under_way[1].write(HANDSHAKE_START)
        reader = asyncio.ensure_future(read_until_closed(ws, replies, arrived))
        behind = await queue_behind_a_full_batch(ws, replies)
        server.process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(wait_until, lambda: ready_status(server) != 200, timeout_s=10,
                                what="the server reporting it is draining", interval_s=0.01)
        outcome, detail = await new_connection(server)
        status, opcode, payload = await finish_handshake(*under_way)
        refused_at = time.monotonic()
        close_code = await asyncio.wait_for(reader, 60)
    print(f"new connection: {outcome} {detail!r}; answered {max(arrived.values()) - refused_at:.2f} s after it")

    if outcome == "closed":
        code, _, messages = detail
        assert messages == [] and code == 1001, detail  # never `ready`, never a drop (1006)
    else:
        assert isinstance(detail, ConnectionRefusedError), detail
    # Accepted (101), then closed with 1001: no `ready` came first.
    assert b" 101 " in status and opcode == CLOSE_OPCODE, (status, opcode, payload)
    assert int.from_bytes(payload[:2], "big") == 1001, payload
    # The open connection got an answer to everything it had sent, some after the refusal, then 1001.
    log = server.log_tail()
    predictions = {rid for rid, reply in replies.items() if reply["type"] == "prediction"}
    assert predictions == {rid for rid in replies if rid.startswith(("full", "behind"))}, (close_code, replies, log)
    assert behind in predictions and arrived[behind] > refused_at, "the drain ended before the connection was tried"
    assert close_code == 1001, log
    assert await asyncio.to_thread(server.process.wait, 30) == 0, server.log_tail()


async def test_an_open_dashboard_is_closed_with_1001_when_the_server_stops(start_daphne):
    server = start_daphne()
    await asyncio.to_thread(create_user, server, "watcher", staff=True)
    cookie = await asyncio.to_thread(login, server, "watcher")
    async with websockets.connect(f"{server.ws_url}/ws/v1/dashboard/", origin=server.url,
                                  additional_headers={"Cookie": cookie}) as ws:
        assert json.loads(await ws.recv())["type"] == "hello"
        server.process.send_signal(signal.SIGTERM)
        code = None
        try:
            while True:  # statistics, once a second, until the close
                await asyncio.wait_for(ws.recv(), 30)
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else None
    assert code == 1001, server.log_tail()  # not 1006: the browser reconnects at once, to another server
    assert await asyncio.to_thread(server.process.wait, 30) == 0, server.log_tail()
