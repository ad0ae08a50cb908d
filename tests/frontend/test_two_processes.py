"""Two daphne processes on one Redis and one database: one dashboard shows the whole platform."""

from __future__ import annotations

import json
import time

import pytest
from websockets.sync.client import connect

from tests.frontend.conftest import IRIS_ROW, create_api_key, create_user, login

# Each process publishes once a second; allow for the first connection's start-up.
SETTLE_TIMEOUT_S = 20.0


def send_predictions(server, key: str, count: int, *, rows: int) -> None:
    with connect(f"{server.ws_url}/ws/v1/predict/iris/", additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        assert json.loads(ws.recv())["type"] == "ready"
        for i in range(count):
            ws.send(json.dumps({"id": i, "inputs": [IRIS_ROW] * rows}))
        replies = [json.loads(ws.recv()) for _ in range(count)]
    assert all(reply["type"] == "prediction" for reply in replies), replies


def watch_until(server, cookie: str, done) -> dict:
    """Read a staff dashboard's messages until ``done(message)``; return that message."""
    last = None
    with connect(f"{server.ws_url}/ws/v1/dashboard/", origin=server.url,
                 additional_headers={"Cookie": cookie}) as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "hello"
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while time.monotonic() < deadline:
            last = json.loads(ws.recv(timeout=5))
            if last["type"] == "stats" and done(last):
                return last
    pytest.fail(f"The dashboard of port {server.port} never showed the expected totals; its last message: {last}")


def test_the_dashboard_totals_are_the_sum_of_both_processes(start_daphne, redis_url, postgres_url):
    env = {"REDIS_URL": redis_url, "DATABASE_URL": postgres_url}
    first = start_daphne(env=env)
    second = start_daphne(env=env)
    create_user(first, "operator", staff=True)
    key = create_api_key(first, "two-processes")

    send_predictions(first, key, 30, rows=2)
    send_predictions(second, key, 50, rows=3)

    pids = {first.process.pid: 30, second.process.pid: 50}
    message = watch_until(first, login(first, "operator"),
                          lambda m: len(m["processes"]) == 2 and m["totals"]["predictions"] == 80)

    assert message["totals"]["rows"] == 30 * 2 + 50 * 3
    assert message["models"]["iris"]["totals"]["predictions"] == 80
    shares = {process["pid"]: (process["totals"]["predictions"], process["share"]) for process in message["processes"]}
    assert shares == {
        first.process.pid: (30, pytest.approx(30 / 80, abs=1e-4)),
        second.process.pid: (50, pytest.approx(50 / 80, abs=1e-4)),
    }
    assert set(pids) == {process["pid"] for process in message["processes"]}

    # The other process's dashboard sees the same platform, logged in on the shared database.
    seen_from_second = watch_until(second, login(second, "operator"),
                                   lambda m: len(m["processes"]) == 2 and m["totals"]["predictions"] == 80)
    assert {p["pid"]: p["totals"]["predictions"] for p in seen_from_second["processes"]} == pids
