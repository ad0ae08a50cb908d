"""The platform's daphne: its unmasking of client frames, its framing and coalescing of writes, ``send_frame``.

Whole connections through a real daphne are in ``tests/streaming/test_daphne_e2e.py``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

import pytest
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket import xormasker
from twisted.internet.testing import StringTransport

from platform_core.server import assembly, coalescing, unmasking
from streaming.transport import SEND_FRAME


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 60, 127, 128, 1000, 70_000])
def test_frames_unmask_as_autobahn_unmasks_them_whole_or_in_pieces(size):
    mask, payload = os.urandom(4), os.urandom(size)
    expected = xormasker.create_xor_masker(mask, size).process(payload)
    assert unmasking.XorMasker(mask).process(payload) == expected
    # A frame that arrives in pieces: the mask carries on where the last piece stopped.
    masker = unmasking.XorMasker(mask)
    cuts = sorted({0, size, *(n * 7 % (size + 1) for n in range(1, 6))})
    pieces = [masker.process(payload[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)]
    assert b"".join(pieces) == expected
    assert masker.pointer() == size
    masker.reset()
    assert masker.pointer() == 0 and masker.process(payload) == expected


def test_the_server_makes_autobahn_use_it(monkeypatch):
    import autobahn.websocket.protocol as protocol

    monkeypatch.setattr(protocol, "create_xor_masker", protocol.create_xor_masker)
    unmasking.use_fast_unmasking()
    assert protocol.create_xor_masker is unmasking.create_xor_masker
    assert isinstance(protocol.create_xor_masker(b"abcd", 10), unmasking.XorMasker)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65_535, 65_536, 70_000])
@pytest.mark.parametrize("binary", [False, True])
def test_data_frames_are_framed_as_autobahn_frames_them(size, binary):
    protocol = WebSocketServerProtocol()
    protocol.factory = WebSocketServerFactory()
    protocol.makeConnection(StringTransport())
    payload = os.urandom(size)
    protocol.sendFrame(opcode=2 if binary else 1, payload=payload)
    assert coalescing.frame_header(size, binary) + payload == protocol.transport.value()


class FakeTcpServer:
    """What CoalescedWrites reads and calls of Twisted's ``tcp.Server``, over a real socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.connected = True
        self._writeDisconnected = False
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0
        self.buffered: list[bytes] = []  # what went the way of Twisted's write()

    def writeSomeData(self, data: bytes):
        try:
            return self.sock.send(data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            return exc

    def write(self, data: bytes) -> None:
        self.buffered.append(data)
        self._tempDataLen += len(data)


@pytest.fixture
def socket_pair():
    left, right = socket.socketpair()
    left.setblocking(False)
    yield left, right
    left.close()
    right.close()


async def test_writes_of_one_loop_pass_leave_in_one_send_in_order(socket_pair):
    left, right = socket_pair
    transport = FakeTcpServer(left)
    writes = coalescing.CoalescedWrites(transport, coalescing.WriteFlusher(asyncio.get_running_loop()))
    sends = []
    send = transport.writeSomeData
    transport.writeSomeData = lambda data: sends.append(data) or send(data)
    for piece in (b"one", b"", b"two", b"three"):
        writes.write(piece)
    assert sends == []  # nothing before the pass ends
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert sends == [b"onetwothree"] and right.recv(100) == b"onetwothree"
    assert transport.buffered == []


async def test_what_the_socket_does_not_take_waits_in_twisteds_buffer_and_later_writes_queue_behind(socket_pair):
    left, right = socket_pair
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    transport = FakeTcpServer(left)
    writes = coalescing.CoalescedWrites(transport, coalescing.WriteFlusher(asyncio.get_running_loop()))
    big = os.urandom(4 * 1024 * 1024)
    writes.write(big)
    writes.flush()
    taken = len(big) - sum(map(len, transport.buffered))
    assert 0 < taken < len(big) and b"".join(transport.buffered) == big[taken:]
    # Twisted still holds bytes: a later write goes behind them, never around them.
    writes.write(b"after")
    writes.flush()
    assert transport.buffered[-1] == b"after"


async def test_a_closed_connection_takes_nothing_and_a_broken_one_is_left_to_twisted(socket_pair):
    left, right = socket_pair
    transport = FakeTcpServer(left)
    writes = coalescing.CoalescedWrites(transport, coalescing.WriteFlusher(asyncio.get_running_loop()))
    transport.connected = False
    writes.write(b"late")
    writes.flush()
    assert transport.buffered == []
    transport.connected = True
    right.close()
    writes.write(b"x" * 100_000)  # to a peer that is gone: send() fails
    writes.flush()
    writes.write(b"y" * 100_000)
    writes.flush()
    # Twisted's own write path meets the error again and closes the connection.
    assert b"".join(transport.buffered).endswith(b"y" * 100_000)


async def test_a_connection_whose_flush_fails_keeps_no_other_connections_writes_back(socket_pair, caplog):
    left, right = socket_pair
    flusher = coalescing.WriteFlusher(asyncio.get_running_loop())
    broken = FakeTcpServer(left)

    def fail(data):
        raise RuntimeError("the transport is in a state nobody expected")

    broken.writeSomeData = fail
    healthy = FakeTcpServer(left)
    broken_writes = coalescing.CoalescedWrites(broken, flusher)
    healthy_writes = coalescing.CoalescedWrites(healthy, flusher)
    with caplog.at_level(logging.ERROR, logger=coalescing.__name__):
        for round_ in (b"first", b"second"):  # the flusher keeps working after the failure
            broken_writes.write(b"lost " + round_)
            healthy_writes.write(round_)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert right.recv(100) == round_
    assert [record.getMessage() for record in caplog.records] == ["Could not send to a WebSocket connection"] * 2


async def test_send_frame_writes_a_frame_while_open_and_nothing_once_the_server_marks_the_connection_disconnected():
    from daphne.ws_protocol import WebSocketFactory

    async def application(scope, receive, send):
        pass

    platform = assembly.PlatformServer(application=application, endpoints=["tcp:port=0:interface=127.0.0.1"])
    factory = WebSocketFactory(platform, server="daphne")
    factory.protocol = assembly.PlatformWebSocketProtocol
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())
    protocol.state = protocol.STATE_OPEN  # as after the opening handshake
    platform.connections = {protocol: {"connected": time.time()}}
    scope = {"type": "websocket"}
    platform.create_application(protocol, scope)
    send = scope["extensions"][SEND_FRAME]["send"]

    assert send(b"reply", False) is True
    assert protocol.transport.value() == coalescing.frame_header(5, False) + b"reply"
    protocol.transport.clear()
    platform.connections[protocol]["disconnected"] = time.time()
    assert send(b"late", True) is False
    del platform.connections[protocol]
    assert send(b"later", True) is False
    assert protocol.transport.value() == b""
