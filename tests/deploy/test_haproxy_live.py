"""deploy/haproxy/haproxy.cfg run by the real HAProxy in front of two real servers, with the platform's client.

Only the addresses change: the two servers' ports stand in for what Docker's
DNS gives (``server-template platform ... platform:8000``), and HAProxy
listens on free ports of this machine. Balancing, health checks, timeouts and
retries are the file's own.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from streaming.client import Backoff, PredictionClient
from tests.support.services import free_port, stop_process, wait_until

from .haproxy_config import HAPROXY_CFG, haproxy_check

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]


def local_config(ports: list[int], listen_port: int, stats_port: int) -> str:
    """The file with its Docker addresses replaced by this machine's, and nothing else."""
    text = HAPROXY_CFG.read_text()
    template = "    server-template platform 1-10 platform:8000\n"
    if template not in text or "bind :8000\n" not in text or "bind :8404\n" not in text:
        raise AssertionError("haproxy.cfg changed: update local_config in this test.")
    servers = "".join(f"    server platform{i} 127.0.0.1:{port}\n" for i, port in enumerate(ports, 1))
    text = text.replace(template, servers).replace(" resolvers docker init-addr none", "")
    return text.replace("bind :8000\n", f"bind 127.0.0.1:{listen_port}\n").replace(
        "bind :8404\n", f"bind 127.0.0.1:{stats_port}\n")


@pytest.fixture
def haproxy(tmp_path: Path, start_daphne):
    servers = [start_daphne({"PLATFORM_REQUIRE_API_KEY": "0"}) for _ in range(2)]
    listen_port, stats_port = free_port(), free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(local_config([s.port for s in servers], listen_port, stats_port))
    checked = haproxy_check(config)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    log = tmp_path / "haproxy.log"
    with open(log, "wb") as output:
        process = subprocess.Popen([haproxy_binary(), "-db", "-f", str(config)], stdout=output,
                                   stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: backends_up(stats_port) == 2, timeout_s=20, what="HAProxy's checks of both servers",
                   process=process, log=log)
        yield f"ws://127.0.0.1:{listen_port}/ws/v1/predict/", servers, stats_port
    finally:
        stop_process(process)


def haproxy_binary() -> str:
    return shutil.which("haproxy") or "/usr/sbin/haproxy"


def backends_up(stats_port: int) -> int:
    """How many servers of the platform backend HAProxy's checks find up (from its Prometheus exporter)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{stats_port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return -1
    return sum(1 for line in text.splitlines()
               if line.startswith("haproxy_server_status{") and 'proxy="platform"' in line
               and 'state="UP"' in line and line.endswith(" 1"))


async def test_a_server_stopped_behind_haproxy_sends_its_clients_to_the_other(haproxy):
    url, servers, stats_port = haproxy
    clients = [PredictionClient(url, None, backoff=Backoff(initial_s=0.05, max_s=0.5)) for _ in range(6)]
    for client in clients:
        await client.connect()
    sent: list[asyncio.Future] = []

    async def stream(duration_s: float) -> None:
        end = time.monotonic() + duration_s
        while time.monotonic() < end:
            sent.extend(asyncio.ensure_future(c.predict("iris", [IRIS_ROW])) for c in clients)
            await asyncio.sleep(0.02)

    await stream(1.0)
    victim, survivor = servers
    victim.process.send_signal(signal.SIGTERM)
    await stream(4.0)
    assert victim.process.poll() is not None, "the stopped server should have drained and exited"
    # Its health check failed: HAProxy sends nothing more its way.
    await asyncio.to_thread(wait_until, lambda: backends_up(stats_port) == 1, timeout_s=15,
                            what="HAProxy marking the stopped server down")
    results = await asyncio.wait_for(asyncio.gather(*sent, return_exceptions=True), 60)
    for client in clients:
        await client.close()
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:3]
    assert {r["outputs"][0]["label"] for r in results} == {"setosa"} and len(results) > 1000
    # leastconn spread the six connections over both servers: those on the stopped one came back through HAProxy.
    assert sum(c.reconnects for c in clients) >= 1
    assert survivor.process.poll() is None
