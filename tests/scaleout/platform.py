"""The platform with several workers for the scale-out tests: who serves, the deployment's metrics, a Redis to kill.

The servers serve the iris model alone (a registry of that one model in
PostgreSQL), so that four workers start in seconds on a small machine
without loading TensorFlow.
"""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from platform_core.server.workers import LISTEN_FD
from tests.support.commands import DemoData
from tests.support.daphne import DaphneServer, start_daphne
from tests.support.processes import ServiceUnavailable, wait_until
from tests.support.redis_server import redis_answers

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
WORKER_START_TIMEOUT_S = 120.0


def iris_only(demo: DemoData, directory: Path) -> DemoData:
    """The demo data with a registry of the iris model alone."""
    rows = json.loads(demo.registry_fixture.read_text())
    iris = {row["pk"] for row in rows if row["model"] == "inference.mlmodel" and row["fields"]["name"] == "iris"}
    kept = [row for row in rows if (row["model"] == "inference.mlmodel" and row["pk"] in iris)
            or (row["model"] == "inference.modelversion" and row["fields"]["model"] in iris)]
    fixture = directory / "iris-registry.json"
    fixture.write_text(json.dumps(kept))
    return DemoData(data_dir=demo.data_dir, env=demo.env, registry_fixture=fixture)


def start_workers(directory: Path, demo: DemoData, workers: int, env: dict[str, str]) -> DaphneServer:
    """The platform on PostgreSQL (``env`` names it) with ``workers`` processes, once every worker is up."""
    if "DATABASE_URL" not in env:
        raise ValueError("The scale-out servers keep their log and keys in PostgreSQL: give DATABASE_URL.")
    server = start_daphne(directory, env=env, extra_args=["--workers", str(workers)], demo=demo,
                          timeout_s=WORKER_START_TIMEOUT_S)
    try:
        wait_for_workers(server, workers)
    except ServiceUnavailable:
        server.stop()
        raise
    return server


def worker_pids(server: DaphneServer) -> list[int]:
    """The serving processes the supervisor started (not their log writers)."""
    try:
        children = psutil.Process(server.process.pid).children()
    except psutil.NoSuchProcess:
        return []
    pids = []
    for child in children:
        try:
            if "systemd:domain=INET:index=0" in child.cmdline():
                pids.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return sorted(pids)


def listening(pid: int, port: int) -> bool:
    """Whether the worker's server listens: it has adopted the socket handed over at fd 3 (Twisted moves it)."""
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.fd != LISTEN_FD for c in connections)


def wait_for_workers(server: DaphneServer, workers: int, *, not_pids: Iterable[int] = ()) -> list[int]:
    """Wait until ``workers`` workers listen, none of them one of ``not_pids``; returns their pids."""
    excluded = set(not_pids)

    def ready() -> bool:
        pids = worker_pids(server)
        return (len(pids) == workers and not excluded & set(pids)
                and all(listening(pid, server.port) for pid in pids))

    wait_until(ready, timeout_s=WORKER_START_TIMEOUT_S, what=f"{workers} workers", process=server.process,
               log=server.log)
    return worker_pids(server)


def connections_by_worker(server: DaphneServer) -> dict[int, int]:
    """How many established connections on the server's port each worker holds."""
    counts = {}
    for pid in worker_pids(server):
        try:
            connections = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        counts[pid] = sum(1 for c in connections if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == server.port)
    return counts


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``GET /metrics``: every sample by name and labels."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(value for (sample, sample_labels), value in samples.items()
               if sample == name and wanted <= set(sample_labels))


def set_key_revoked(database_url: str, name: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("UPDATE streaming_apikey SET revoked_at = now() WHERE name = %s", (name,))


@dataclass
class RedisProcess:
    """A redis-server of the test's own, to kill and start again on the same port."""

    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        with open(self.log, "ab") as output:
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        wait_until(lambda: redis_answers(self.url), timeout_s=20, what="redis-server", process=self.process,
                   log=self.log)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None
