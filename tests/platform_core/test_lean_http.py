"""The server's lean HTTP path (platform_core/server/lean_http.py) against a real server, over raw sockets.

Connections whose first request is under /v2 are served by httptools and the
ASGI application directly; any other first request, WebSocket handshakes
included, is handed to daphne's channel with every byte received.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time

import pytest
from websockets.sync.client import connect

from tests.support.commands import manage

pytestmark = pytest.mark.realservice

PREDICT_PATH = "/ws/v1/predict/"
INFER = b'{"id":"r-%d","inputs":[{"name":"x","shape":[1,4],"datatype":"FP64","data":[5.1,3.5,1.4,0.2]}]}'


@pytest.fixture(scope="module")
def server(daphne_server):
    return daphne_server


@pytest.fixture(scope="module")
def key(server):
    return manage("create_api_key", "lean-http", env=server.env).stdout.strip()


def infer_request(key: str, n: int = 0, extra: bytes = b"") -> bytes:
    body = INFER % n
    return (b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer %s\r\nContent-Length: %d\r\n%s\r\n%s" % (key.encode(), len(body), extra, body))


class Reader:
    """HTTP/1.1 responses read off a raw socket, one at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError(f"closed before a response head: {self.buffer!r}")
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                while b"\r\n" not in self.buffer:
                    self._fill()
                size_line, _, self.buffer = self.buffer.partition(b"\r\n")
                size = int(size_line, 16)
                while len(self.buffer) < size + 2:
                    self._fill()
                body, self.buffer = body + self.buffer[:size], self.buffer[size + 2:]
                if size == 0:
                    return int(status_line.split()[1]), headers, body
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            if not self._fill():
                break
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), headers, body

    def closed(self, timeout_s: float = 5.0) -> bool:
        self.sock.settimeout(timeout_s)
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, TimeoutError):
            return False


def open_socket(server) -> tuple[socket.socket, Reader]:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    return sock, Reader(sock)


def test_infer_requests_on_one_keep_alive_connection_are_answered_in_order(server, key):
    sock, reader = open_socket(server)
    with sock:
        for n in range(3):
            sock.sendall(infer_request(key, n))
            status, headers, body = reader.response()
            assert status == 200 and headers["connection"] == "keep-alive"
            reply = json.loads(body)
            assert reply["id"] == f"r-{n}" and reply["outputs"][0]["data"] == ["setosa"]
        # Pipelined: three requests in one write, three responses in their order.
        sock.sendall(b"".join(infer_request(key, n) for n in range(10, 13)))
        assert [json.loads(reader.response()[2])["id"] for _ in range(3)] == ["r-10", "r-11", "r-12"]


def test_a_later_request_for_django_on_a_lean_connection_is_served_too(server, key):
    sock, reader = open_socket(server)
    with sock:
        sock.sendall(infer_request(key))
        assert reader.response()[0] == 200
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, _, body = reader.response()
        assert status == 200 and json.loads(body)["ready"] is True


def test_a_chunked_request_body_is_read_whole(server, key):
    body = INFER % 7
    half = len(body) // 2
    chunked = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, body[:half], len(body) - half, body[half:])
    sock, reader = open_socket(server)
    with sock:
        sock.sendall(b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" % key.encode())
        time.sleep(0.05)  # the body arrives later than the head
        sock.sendall(chunked)
        status, _, answer = reader.response()
        assert status == 200 and json.loads(answer)["id"] == "r-7"


def test_connection_close_is_honoured(server, key):
    sock, reader = open_socket(server)
    with sock:
        sock.sendall(infer_request(key, extra=b"Connection: close\r\n"))
        status, headers, _ = reader.response()
        assert status == 200 and headers["connection"] == "close"
        assert reader.closed()


@pytest.mark.parametrize("garbage", [
    b"POST /v2/models/iris/infer HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
    b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n",
], ids=["bad-length", "head-too-large"])
def test_a_malformed_request_gets_a_4xx_and_the_server_serves_on(server, key, garbage):
    sock, reader = open_socket(server)
    with sock:
        sock.sendall(garbage)
        status, headers, _ = reader.response()
        assert status in (400, 431) and headers["connection"] == "close"
        assert reader.closed()
    sock, reader = open_socket(server)
    with sock:
        sock.sendall(infer_request(key))
        assert reader.response()[0] == 200


def test_a_websocket_handshake_goes_to_daphne_first_or_after_lean_requests(server, key):
    headers = {"Authorization": f"Bearer {key}"}
    with connect(server.ws_url + PREDICT_PATH, additional_headers=headers, open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
    # The same upgrade after an infer request on one connection: rebuilt and handed over.
    sock, reader = open_socket(server)
    with sock:
        sock.sendall(infer_request(key))
        assert reader.response()[0] == 200
        nonce = base64.b64encode(os.urandom(16))
        path = PREDICT_PATH.encode()
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer %s\r\n\r\n"
                     % (path, nonce, key.encode()))
        status, headers_seen, _ = reader.response()
        assert status == 101 and headers_seen["upgrade"].lower() == "websocket"


def test_a_first_request_for_django_is_daphne_s(server):
    sock, reader = open_socket(server)
    with sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, headers, body = reader.response()
        assert status == 200 and json.loads(body)["ready"] is True
        # daphne's channel writes its own headers; the lean path writes neither.
        assert "server" in headers or "date" in headers
