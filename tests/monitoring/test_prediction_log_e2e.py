"""The prediction log through a real daphne and a real WebSocket client: one record per request, none lost.

The database is taken away mid-stream the way it fails in production (a
SQLite file locked by another process, PostgreSQL refusing connections) and
given back; servers are stopped cleanly and killed, and started again on
their spill files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import websockets
from psycopg import sql
from psycopg.rows import dict_row

from tests.monitoring.conftest import sqlite_held_exclusively
from tests.support import services
from tests.support.services import DaphneServer, manage

COLUMNS = ("request_id, event_id, model, version, api_key, outcome, error, inputs, outputs, "
           "queue_ms, inference_ms, total_ms, batch_size, rows")
# Below the connection's max_in_flight, so that none is refused as overloaded.
PIPELINE = 200


# -- the client side -------------------------------------------------------------------------


def api_key(server: DaphneServer, name: str) -> str:
    return manage("create_api_key", name, env=server.env).stdout.strip()


def iris_rows(rng: random.Random) -> list[list[float]]:
    return [[round(rng.uniform(4, 8), 2), round(rng.uniform(2, 4.5), 2), round(rng.uniform(1, 7), 2),
             round(rng.uniform(0.1, 2.5), 2)] for _ in range(rng.randint(1, 3))]


class Client:
    """One authenticated prediction connection that remembers what it sent and what came back."""

    def __init__(self, server: DaphneServer, key: str, prefix: str) -> None:
        self.server, self.key, self.prefix = server, key, prefix
        self.sent: dict[str, dict[str, Any]] = {}
        self.replies: dict[str, dict[str, Any]] = {}
        self.rng = random.Random(prefix)
        self.ws: Any = None

    async def __aenter__(self) -> Client:
        self.ws = await websockets.connect(
            self.server.ws_url + "/ws/v1/predict/", additional_headers={"Authorization": f"Bearer {self.key}"},
            max_size=2**24,
        )
        ready = json.loads(await self.ws.recv())
        assert ready["type"] == "ready", ready
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.ws.close()

    async def predict(self, count: int, **fields: Any) -> list[dict[str, Any]]:
        """Send ``count`` requests, pipelined, and return their replies."""
        replies = []
        for start in range(0, count, PIPELINE):
            ids = []
            for _ in range(min(PIPELINE, count - start)):
                rid = f"{self.prefix}-{len(self.sent)}"
                frame = {"type": "predict", "id": rid, "model": "iris", "inputs": iris_rows(self.rng), **fields}
                self.sent[rid] = frame
                ids.append(rid)
                await self.ws.send(json.dumps(frame))
            for _ in ids:
                reply = json.loads(await asyncio.wait_for(self.ws.recv(), timeout=30))
                self.replies[reply["id"]] = reply
                replies.append(reply)
        return replies


# -- the database side -------------------------------------------------------------------------


def stored(server: DaphneServer) -> list[dict[str, Any]]:
    """Every record in the server's database, JSON fields decoded."""
    url = server.env.get("DATABASE_URL")
    if url:
        with psycopg.connect(url, row_factory=dict_row, connect_timeout=5) as connection:
            rows = connection.execute(
                f"SELECT {COLUMNS.replace('event_id', 'event_id::text AS event_id')} "
                "FROM monitoring_predictionrecord"
            ).fetchall()
        return [dict(row) for row in rows]
    connection = sqlite3.connect(f"file:{server.data_dir / 'platform.sqlite3'}?mode=ro", uri=True, timeout=30)
    connection.row_factory = sqlite3.Row
    try:
        rows = connection.execute(f"SELECT {COLUMNS} FROM monitoring_predictionrecord").fetchall()
    finally:
        connection.close()
    records = [dict(row) for row in rows]
    for record in records:
        for field in ("inputs", "outputs"):
            record[field] = None if record[field] is None else json.loads(record[field])
    return records


def wait_for_records(server: DaphneServer, count: int, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        records = stored(server)
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def assert_each_request_once(records: list[dict[str, Any]], request_ids: list[str]) -> dict[str, dict[str, Any]]:
    by_id: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_id.setdefault(record["request_id"], []).append(record)
    twice = sorted(rid for rid, found in by_id.items() if len(found) > 1)
    missing = sorted(set(request_ids) - set(by_id))
    unexpected = sorted(set(by_id) - set(request_ids))
    assert not twice and not missing and not unexpected, (
        f"{len(twice)} twice {twice[:5]}, {len(missing)} missing {missing[:5]}, "
        f"{len(unexpected)} unexpected {unexpected[:5]}"
    )
    assert len({record["event_id"] for record in records}) == len(records)
    return {rid: found[0] for rid, found in by_id.items()}


def spill_lines(directory: Path) -> int:
    return sum(path.read_bytes().count(b"\n") for path in directory.glob("predictions-*.jsonl"))


def wait_until(condition: Any, timeout_s: float, what: str) -> None:
    services.wait_until(condition, timeout_s=timeout_s, what=what)


# -- taking the database away -------------------------------------------------------------------


def sqlite_locked(server: DaphneServer) -> contextlib.AbstractContextManager[None]:
    """Another process's connection holds the server's SQLite file under ``BEGIN EXCLUSIVE``."""
    return sqlite_held_exclusively(str(server.data_dir / "platform.sqlite3"))


def _database_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


def refuse_connections(database_url: str) -> None:
    """PostgreSQL refuses new connections to this one database and ends those it has; others are untouched."""
    name = _database_name(database_url)
    with psycopg.connect(services.with_path(database_url, "/postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = %s AND pid <> pg_backend_pid()", [name])


def allow_connections(database_url: str) -> None:
    name = _database_name(database_url)
    with psycopg.connect(services.with_path(database_url, "/postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name)))


@pytest.fixture
def database_url(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL database of this test's own, so that refusing its connections disturbs no other."""
    with services.throwaway_database(services.with_path(postgres_url, "/postgres")) as url:
        try:
            yield url
        finally:
            allow_connections(url)


# -- the tests -------------------------------------------------------------------------------------


async def test_n_predictions_make_exactly_n_records_with_their_outputs_and_timings(start_daphne):
    server = start_daphne()
    key = api_key(server, "log-e2e")
    async with Client(server, key, "ok") as client:
        replies = await client.predict(500)
        refused = await client.predict(3, inputs=[[1.0, 2.0]])
    assert all(reply["type"] == "prediction" for reply in replies)
    assert all(reply["error"]["code"] == "invalid_input" for reply in refused)

    records = assert_each_request_once(wait_for_records(server, 503), list(client.sent))
    for rid, reply in client.replies.items():
        record = records[rid]
        assert record["inputs"] == client.sent[rid]["inputs"]
        assert (record["model"], record["api_key"]) == ("iris", "log-e2e")
        assert record["rows"] == len(client.sent[rid]["inputs"])
        if reply["type"] == "prediction":
            assert record["version"] == reply["version"] == 1
            assert record["outcome"] == "ok"
            assert record["outputs"] == reply["outputs"]
            assert record["batch_size"] == reply["batch_size"]
            for timing in ("queue_ms", "inference_ms", "total_ms"):
                assert record[timing] == pytest.approx(reply["timing"][timing], abs=0.0006), timing
        else:
            assert record["outcome"] == "invalid_input"
            assert record["error"] == reply["error"]["message"]
            assert record["outputs"] is None


async def test_a_clean_shutdown_writes_what_is_still_in_memory(start_daphne):
    # Nothing is written on its own within the test: only the shutdown writes.
    server = start_daphne(env={"PLATFORM_LOG_FLUSH_INTERVAL_MS": "600000", "PLATFORM_LOG_BATCH_SIZE": "100000"})
    key = api_key(server, "log-e2e")
    async with Client(server, key, "late") as client:
        await client.predict(300)
    await asyncio.sleep(0.5)
    assert stored(server) == []
    server.stop()
    assert server.process.returncode == 0, server.log_tail()
    assert_each_request_once(stored(server), list(client.sent))


async def test_a_locked_sqlite_file_delays_records_but_loses_none(start_daphne):
    server = start_daphne(env={"PLATFORM_LOG_DB_TIMEOUT_S": "0.5", "PLATFORM_LOG_BUFFER_RECORDS": "100",
                               "PLATFORM_LOG_BATCH_SIZE": "50"})
    key = api_key(server, "log-e2e")
    async with Client(server, key, "sqlite") as client:
        await client.predict(100)
        wait_for_records(server, 100)
        with sqlite_locked(server):
            started = time.monotonic()
            replies = await client.predict(600)
            answered_in = time.monotonic() - started
            # Held past several of the writer's timeouts: it retries, and spills.
            await asyncio.sleep(max(0.0, 3.0 - answered_in))
            assert spill_lines(server.data_dir / "spill") > 0, "past the high-water mark records go to disk"
        # All answered while the file was still locked, none waiting for it.
        assert all(reply["type"] == "prediction" for reply in replies), "predictions flow on"
        assert max(reply["timing"]["total_ms"] for reply in replies) < 2500
    records = wait_for_records(server, 700)
    assert_each_request_once(records, list(client.sent))
    assert "cannot write to the database" in server.log_tail(200)
    wait_until(lambda: spill_lines(server.data_dir / "spill") == 0, 10, "the spill files to be replayed")


@pytest.mark.timeout(600)
async def test_postgresql_refusing_connections_delays_records_but_loses_none(start_daphne, database_url):
    server = start_daphne(env={"DATABASE_URL": database_url, "PLATFORM_LOG_DB_TIMEOUT_S": "1",
                               "PLATFORM_LOG_BUFFER_RECORDS": "100", "PLATFORM_LOG_BATCH_SIZE": "50"})
    key = api_key(server, "log-e2e")
    async with Client(server, key, "pg") as client:
        await client.predict(100)
        assert len(wait_for_records(server, 100)) == 100
        refuse_connections(database_url)
        try:
            replies = await client.predict(600)
            assert all(reply["type"] == "prediction" for reply in replies), "predictions flow on"
            wait_until(lambda: spill_lines(server.data_dir / "spill") > 0, 15, "records to spill")
            await asyncio.sleep(1.0)
        finally:
            allow_connections(database_url)
        # Back: more traffic on the same connection, and everything lands once.
        await client.predict(50)
    records = wait_for_records(server, 750, timeout_s=60)
    assert_each_request_once(records, list(client.sent))
    assert "cannot write to the database" in server.log_tail(300)


def spilled_request_ids(directory: Path) -> list[str]:
    index = 5  # request_id, in the order of monitoring.predictionlog.COLUMNS
    return [json.loads(line)[index] for path in directory.glob("predictions-*.jsonl")
            for line in path.read_text().splitlines()]


def wait_until_still(directory: Path, quiet_s: float = 1.0, timeout_s: float = 20.0) -> None:
    """Wait until no spill file has grown for ``quiet_s``."""
    deadline = time.monotonic() + timeout_s
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        lines = spill_lines(directory)
        if lines != last:
            last, since = lines, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.1)
    raise AssertionError(f"The spill files in {directory} kept growing for {timeout_s} s.")


@pytest.mark.timeout(600)
async def test_spill_files_are_replayed_by_the_next_server(start_daphne, database_url, tmp_path):
    spill_dir = tmp_path / "spill"
    env = {"DATABASE_URL": database_url, "PLATFORM_LOG_SPILL_DIR": str(spill_dir), "PLATFORM_LOG_DB_TIMEOUT_S": "1",
           "PLATFORM_LOG_BUFFER_RECORDS": "100", "PLATFORM_LOG_BATCH_SIZE": "50"}

    # A server stopped cleanly while the database is away spills all it holds.
    first = start_daphne(env=env)
    key = api_key(first, "log-e2e")
    async with Client(first, key, "clean") as client:
        await client.predict(50)
        assert len(wait_for_records(first, 50)) == 50
        refuse_connections(database_url)
        await client.predict(300)
    first.stop()
    assert first.process.returncode == 0, first.log_tail()
    assert sorted(spilled_request_ids(spill_dir)) == sorted(list(client.sent)[50:])
    expected = list(client.sent)

    # The next server replays them as it starts, before any traffic of its own.
    allow_connections(database_url)
    second = start_daphne(env=env)
    assert_each_request_once(wait_for_records(second, len(expected)), expected)
    wait_until(lambda: not list(spill_dir.glob("*.jsonl")), 10, "the replayed spill file to be removed")

    # A server killed while the database is away leaves what it had spilled.
    async with Client(second, key, "killed") as client:
        refuse_connections(database_url)
        await client.predict(400)
        wait_until(lambda: spill_lines(spill_dir) >= 400 - 60, 20, "the second server to spill")
        wait_until_still(spill_dir)
        second.process.send_signal(signal.SIGKILL)
        second.process.wait(timeout=10)
    spilled = spilled_request_ids(spill_dir)
    assert set(spilled) <= set(client.sent)
    expected += spilled

    allow_connections(database_url)
    third = start_daphne(env=env)
    assert_each_request_once(wait_for_records(third, len(expected), timeout_s=60), expected)
    wait_until(lambda: not list(spill_dir.glob("*.jsonl")), 10, "the replayed spill files to be removed")
