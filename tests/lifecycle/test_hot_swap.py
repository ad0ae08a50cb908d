"""A version activated and rolled back while clients stream to two server processes: no request is lost.

Two daphne processes share one data directory, one PostgreSQL database and
one Redis. Clients stream to both, unpinned and pinned to version 1, while
``manage.py register_model`` registers a retrained iris (another ``C``, so its
outputs differ), ``manage.py activate_version`` activates it and then rolls
back. Every request must get exactly one reply, none an error; each reply
comes from the version that was active when the request was accepted (the
pinned one for pinned requests), which shows per connection as versions that
change only at the two switches, each process serving the new version within
2 s of the commit; every connection is told the new catalog; the prediction
log holds every request with the version that served it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import psycopg
import pytest
import skops.io
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from websockets.asyncio.client import connect

from tests.support.commands import manage, platform_env
from tests.support.postgres_server import throwaway_database

ROW = [6.0, 2.9, 4.5, 1.5]
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
#: Each connection sends one request every this many seconds.
SEND_INTERVAL_S = 0.02
#: Every process must serve a newly active version this soon after its commit.
CONVERGENCE_S = 2.0
#: Streaming before the first switch, and after each.
STEADY_S = 2.0
AFTER_SWITCH_S = 4.0


@dataclass
class Stream:
    """One client connection: what it sent when, what came back, and the catalogs it was told unasked."""

    server: int
    name: str
    pinned: bool
    sent: dict[str, float] = field(default_factory=dict)
    replies: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    pushes: list[tuple[float, int]] = field(default_factory=list)

    def versions_in_order(self) -> list[int]:
        return [self.replies[rid][0]["version"] for rid in sorted(self.sent, key=self.sent.__getitem__)]


async def stream(url: str, record: Stream, stop: asyncio.Event) -> None:
    async with connect(f"{url}/ws/v1/predict/iris/", max_size=None) as ws:
        ready = json.loads(await ws.recv())
        assert ready["type"] == "ready" and ready["models"]["iris"]["version"] == 1, ready

        async def read() -> None:
            async for raw in ws:
                message = json.loads(raw)
                if message["type"] == "models":
                    record.pushes.append((time.time(), message["models"]["iris"]["version"]))
                else:
                    record.replies[message.get("id")].append(message)

        reader = asyncio.create_task(read())
        n = 0
        while not stop.is_set():
            rid = f"{record.name}-{n}"
            request = {"id": rid, "inputs": [ROW], **({"version": 1} if record.pinned else {})}
            record.sent[rid] = time.time()
            await ws.send(json.dumps(request))
            n += 1
            await asyncio.sleep(SEND_INTERVAL_S)
        deadline = time.monotonic() + 10
        while len(record.replies) < len(record.sent) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        reader.cancel()


def commit_time(database_url: str, action: str) -> float:
    """When the latest ``action`` of iris was recorded: inside its transaction, just before the commit."""
    with psycopg.connect(database_url) as connection:
        at: datetime = connection.execute(
            "SELECT e.at FROM inference_deploymentevent e JOIN inference_mlmodel m ON m.id = e.model_id "
            "WHERE m.name = 'iris' AND e.action = %s ORDER BY e.id DESC LIMIT 1", (action,),
        ).fetchone()[0]
    return at.timestamp()


@pytest.fixture
def database_url(postgres_url):
    """A database of its own on the session's PostgreSQL: the registry starts empty."""
    with throwaway_database(postgres_url) as url:
        yield url


async def test_a_version_activated_and_rolled_back_under_traffic_loses_nothing(
        database_url, redis_url, start_daphne, tmp_path):
    iris = load_iris()
    labels = np.asarray(iris.target_names)[iris.target]
    estimators = {1: LogisticRegression(C=1.0, max_iter=2000), 2: LogisticRegression(C=0.01, max_iter=2000)}
    for number, estimator in estimators.items():
        skops.io.dump(estimator.fit(iris.data, labels), tmp_path / f"iris-v{number}.skops")
    env = {"REDIS_URL": redis_url, "DATABASE_URL": database_url, "PLATFORM_DATA_DIR": str(tmp_path / "data"),
           "PLATFORM_REQUIRE_API_KEY": "0"}
    commands = platform_env(tmp_path / "data", env)
    manage("migrate", "--no-input", env=commands)
    manage("register_model", "iris", "--artifact", str(tmp_path / "iris-v1.skops"), "--framework", "sklearn",
           "--activate", "--task", "classification", "--inputs", ",".join(FEATURES), "--outputs", "label",
           env=commands)
    servers = [start_daphne(env=env, demo_models=False) for _ in range(2)]

    stop = asyncio.Event()
    streams = [Stream(server, f"s{server}-{kind}{n}", kind == "pinned")
               for server in range(2) for kind, n in (("free", 0), ("free", 1), ("pinned", 0))]
    clients = [asyncio.create_task(stream(servers[s.server].ws_url, s, stop)) for s in streams]
    await asyncio.sleep(STEADY_S)
    await asyncio.to_thread(manage, "register_model", "iris", "--artifact", str(tmp_path / "iris-v2.skops"),
                            "--framework", "sklearn", env=commands)
    await asyncio.to_thread(manage, "activate_version", "iris", "2", env=commands)
    activated = commit_time(database_url, "activated")
    await asyncio.sleep(AFTER_SWITCH_S)
    await asyncio.to_thread(manage, "activate_version", "iris", "--rollback", env=commands)
    rolled_back = commit_time(database_url, "rolled_back")
    await asyncio.sleep(AFTER_SWITCH_S)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*clients), 30)

    expected = {number: estimator.predict_proba([ROW])[0] for number, estimator in estimators.items()}
    for record in streams:
        assert record.sent and set(record.replies) == set(record.sent), f"{record.name}: replies missing or unasked"
        for rid, replies in record.replies.items():
            assert len(replies) == 1, (rid, replies)
            reply = replies[0]
            assert reply["type"] == "prediction", reply
            got = [reply["outputs"][0]["probabilities"][label] for label in iris.target_names]
            np.testing.assert_allclose(got, expected[reply["version"]], rtol=1e-5)
        versions = record.versions_in_order()
        if record.pinned:
            assert set(versions) == {1}, record.name
            continue
        # Versions change at the two switches only, in order.
        runs = [v for i, v in enumerate(versions) if i == 0 or versions[i - 1] != v]
        assert runs == [1, 2, 1], (record.name, runs)
        for rid, sent in record.sent.items():
            version = record.replies[rid][0]["version"]
            if sent < activated:
                assert version == 1, (rid, sent - activated)
            elif activated + CONVERGENCE_S <= sent < rolled_back:
                assert version == 2, (rid, f"sent {sent - activated:.2f} s after the activation committed")
            elif sent >= rolled_back + CONVERGENCE_S:
                assert version == 1, (rid, f"sent {sent - rolled_back:.2f} s after the rollback committed")
    for record in streams:
        told = dict((version, at) for at, version in reversed(record.pushes))
        assert [version for _, version in record.pushes] == [2, 1], (record.name, record.pushes)
        assert told[2] - activated < CONVERGENCE_S and told[1] - rolled_back < CONVERGENCE_S, record.pushes

    for server in servers:
        server.stop()
    with psycopg.connect(database_url) as connection:
        logged = connection.execute(
            "SELECT request_id, version, outcome FROM monitoring_predictionrecord WHERE model = 'iris'"
        ).fetchall()
    answered = {rid: (replies[0]["version"], "ok") for record in streams for rid, replies in record.replies.items()}
    assert len(logged) == len(answered)
    assert {rid: (version, outcome) for rid, version, outcome in logged} == answered
