"""The prediction log tells what each client got while PostgreSQL itself is down, once it is back.

The server's database runs on a cluster of this test's own, which is
stopped for ten seconds under continuous load and started again: the
replies flow on, the records wait in memory and spill files, and every reply
received ends up with exactly one record of its outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mirakuru.exceptions import ExecutorError
from pytest_postgresql.executors import PostgreSQLExecutor

from tests.reliability.log_comparison import (
    StreamingClient,
    api_key,
    compare,
    stream,
    until_answered,
    wait_for_replies_logged,
)
from tests.support import services
from tests.support.postgres_server import _pg_ctl_for_cluster_owner

CONNECTIONS = 4
DEPTH = 32
# Paced, so that the ten seconds down stay a few thousand requests.
RATE_PER_S = 100
DOWN_S = 10.0


@contextlib.contextmanager
def stoppable_postgres() -> Iterator[PostgreSQLExecutor]:
    """A throwaway cluster, as ``throwaway_postgres`` starts one, whose executor the test may stop and start."""
    directory = Path(tempfile.mkdtemp(prefix="platform-postgres-"))
    cluster = directory / "cluster"
    cluster.mkdir()
    executor = PostgreSQLExecutor(
        executable=_pg_ctl_for_cluster_owner(directory, cluster), host="127.0.0.1", port=services.free_port(),
        user="postgres", dbname="postgres", datadir=str(cluster / "data"), unixsocketdir=str(cluster),
        logfile=str(cluster / "postgresql.log"), startparams="-w", timeout=60,
    )
    try:
        try:
            executor.start()
        except (ExecutorError, OSError, subprocess.SubprocessError) as exc:
            pytest.fail(f"PostgreSQL did not start: {exc}", pytrace=False)
        try:
            yield executor
        finally:
            if executor.running():
                executor.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def postgres() -> Iterator[PostgreSQLExecutor]:
    with stoppable_postgres() as executor:
        yield executor


@pytest.fixture
def database_url(postgres: PostgreSQLExecutor) -> Iterator[str]:
    with services.throwaway_database(f"postgresql://postgres@127.0.0.1:{postgres.port}/postgres") as url:
        yield url


def spill_lines(directory: Path) -> int:
    return sum(path.read_bytes().count(b"\n") for path in directory.glob("predictions-*.jsonl"))


@pytest.mark.timeout(300)
async def test_postgresql_down_under_load_delays_the_records_of_what_clients_got(
    start_daphne, postgres, database_url
):
    server = start_daphne(env={"DATABASE_URL": database_url, "PLATFORM_LOG_DB_TIMEOUT_S": "1",
                               "PLATFORM_LOG_BUFFER_RECORDS": "1000"})
    spill_dir = server.data_dir / "spill"
    key = api_key(server, "log-truth")
    clients = [StreamingClient(server, key, f"pg{number}", depth=DEPTH, rate_per_s=RATE_PER_S)
               for number in range(CONNECTIONS)]
    stop = asyncio.Event()
    load = asyncio.create_task(stream(clients, stop))
    await until_answered(clients, 1)
    await asyncio.sleep(1.0)

    await asyncio.to_thread(postgres.stop)
    down_since = time.monotonic()
    try:
        answered_before = sum(len(client.replies) for client in clients)
        await asyncio.sleep(DOWN_S)
        spilled = spill_lines(spill_dir)
        answered_while_down = sum(len(client.replies) for client in clients) - answered_before
    finally:
        await asyncio.to_thread(postgres.start)
    print(f"PostgreSQL down {time.monotonic() - down_since:.1f} s: {answered_while_down} replies meanwhile, "
          f"{spilled} records spilled")
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.wait_for(load, 30)

    assert answered_while_down > RATE_PER_S * DOWN_S, "replies flow while the database is down"
    assert spilled > 0, "past the high-water mark the records went to spill files"
    assert [client.close_code for client in clients] == [1000] * CONNECTIONS, "the clients closed, not the server"
    assert all(not client.unanswered for client in clients)
    records = await asyncio.to_thread(wait_for_replies_logged, database_url, clients, 60)
    comparison = compare(clients, records)
    print(f"PostgreSQL down under load: {comparison.summary()}")
    comparison.assert_every_reply_logged_once()
    assert comparison.unanswered_logged == {}
    services.wait_until(lambda: not list(spill_dir.glob("predictions-*.jsonl")), timeout_s=20,
                        what="the spill files to be replayed")
