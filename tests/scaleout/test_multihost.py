"""Three hosts of two workers each behind HAProxy, sharing one Redis and one PostgreSQL; one stopped, one killed.

The hosts are network namespaces on this machine (``tests/scaleout/netns.py``).
Clients stream through HAProxy, each connection with ids of its own, and
connect again through HAProxy whenever a connection ends. Mid-stream one host
gets SIGTERM (its clients are answered, then closed with 1001) and another is
killed with SIGKILL and started again on the same data directory, whose
journal brings what it had answered into the log. Afterwards every reply a
client received must be in the PostgreSQL log exactly once, with its outcome.

Needs root, iproute2 and haproxy: without them the test fails and says what
is missing (the suite's rule: a test that needs a real part never skips).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import types
from collections import Counter
from pathlib import Path
from typing import cast

import pytest
from websockets.exceptions import InvalidHandshake, WebSocketException

from tests.reliability.log_comparison import StreamingClient, api_key, compare, logged, wait_for_replies_logged
from tests.scaleout import netns
from tests.scaleout.netns import Balancer, Host, NamespacesUnavailable, Network, host_env, relayed
from tests.support.commands import DemoData, manage, platform_env
from tests.support.daphne import DaphneServer
from tests.support.processes import ServiceUnavailable

HOSTS = 3
WORKERS_PER_HOST = 2
CLIENTS = 6
RATE_PER_CLIENT_S = 40.0
DEPTH = 8
PREFIX = "mh"


class Reconnecting:
    """One client through HAProxy: streams on a connection until it ends, then connects again with new ids."""

    def __init__(self, balancer: Balancer, key: str, name: str) -> None:
        self.target = cast(DaphneServer, types.SimpleNamespace(ws_url=balancer.ws_url))
        self.key, self.name = key, name
        #: Each connection's client, with when it opened and ended (monotonic seconds).
        self.connections: list[tuple[StreamingClient, float, float]] = []
        self.failed_connects: list[str] = []

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            client = StreamingClient(self.target, self.key, f"{PREFIX}{self.name}.{len(self.connections)}",
                                     depth=DEPTH, rate_per_s=RATE_PER_CLIENT_S)
            opened = time.monotonic()
            try:
                await client.run(stop)
            except (OSError, InvalidHandshake, WebSocketException, AssertionError) as exc:
                self.failed_connects.append(type(exc).__name__)
            self.connections.append((client, opened, time.monotonic()))
            await asyncio.sleep(0.1)


def answered_after(clients: list[Reconnecting], moment: float) -> int:
    return sum(len(client.replies) for reconnecting in clients
               for client, opened, _ in reconnecting.connections if opened >= moment)


async def test_hosts_behind_haproxy_stop_and_crash_without_losing_a_logged_reply(
        iris_demo: DemoData, module_database: str, redis_url: str, tmp_path: Path):
    try:
        netns.require()
    except NamespacesUnavailable as exc:
        pytest.fail(f"The multi-host test builds hosts as network namespaces and cannot here: {exc}", pytrace=False)
    network = Network.create(HOSTS)
    hosts: list[Host] = []
    balancer: Balancer | None = None
    try:
        balancer = Balancer.write(tmp_path, network, [(f"h{n}", network.address(n)) for n in range(1, HOSTS + 1)],
                                  redis_url, module_database)
        balancer.start()
        admin_env = platform_env(tmp_path / "admin", {"DATABASE_URL": module_database, "REDIS_URL": redis_url})
        manage("migrate", "--no-input", env=admin_env)
        manage("loaddata", str(iris_demo.registry_fixture), env=admin_env)
        key = api_key(cast(DaphneServer, types.SimpleNamespace(env=admin_env)), "multihost")
        database = relayed(module_database, network.gateway, balancer.postgres_relay)
        redis = relayed(redis_url, network.gateway, balancer.redis_relay)
        for number in range(1, HOSTS + 1):
            env = host_env(tmp_path / f"h{number}", iris_demo.data_dir / "models", network.address(number),
                           database, redis)
            hosts.append(Host(f"h{number}", network.namespaces[number - 1], network.address(number), env,
                              tmp_path / f"h{number}.log", WORKERS_PER_HOST))
        try:
            await asyncio.gather(*(asyncio.to_thread(host.start) for host in hosts))
        except ServiceUnavailable as exc:
            pytest.fail(str(exc), pytrace=False)
        await asyncio.to_thread(balancer.wait_until_up, [host.name for host in hosts])
        stopped, killed, _ = hosts

        clients = [Reconnecting(balancer, key, f"c{number}") for number in range(CLIENTS)]
        stop = asyncio.Event()
        load = asyncio.gather(*(client.run(stop) for client in clients))
        await asyncio.sleep(3)

        # SIGTERM: the host drains; its clients are answered, get 1001 and connect again elsewhere.
        terminated_at = time.monotonic()
        assert stopped.process is not None
        stopped.process.send_signal(signal.SIGTERM)
        drained = await asyncio.to_thread(stopped.process.wait, 60)
        await asyncio.sleep(2)

        # SIGKILL: every process of the host at once, as in a crash; then it starts again on the same disk.
        killed_at = time.monotonic()
        for pid in network.pids(killed.namespace):
            os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(1)
        try:
            await asyncio.to_thread(killed.start)
        except ServiceUnavailable as exc:
            pytest.fail(str(exc), pytrace=False)
        restarted_at = time.monotonic()
        await asyncio.sleep(3)
        stop.set()
        await asyncio.wait_for(load, 60)

        everyone = [client for reconnecting in clients for client, _, _ in reconnecting.connections]
        records = [record for record in await asyncio.to_thread(wait_for_replies_logged, module_database, everyone, 60)
                   if record.request_id.startswith(PREFIX)]
        comparison = compare(everyone, records)
        closes = Counter(client.close_code for client in everyone)
        recovered = sum(int(n) for n in re.findall(r"Recovered (\d+) prediction records", killed.log_tail(5000)))
        drained_ids = [rid for client in everyone if client.close_code == 1001 for rid in client.sent]
        print(f"\n{HOSTS} hosts x {WORKERS_PER_HOST} workers, {CLIENTS} clients through HAProxy: "
              f"{len(everyone)} connections, closes {dict(closes)}, failed connects "
              f"{sum(len(c.failed_connects) for c in clients)}; SIGTERMed host exited {drained}; "
              f"replies after the SIGTERM {answered_after(clients, terminated_at)}, after the SIGKILL "
              f"{answered_after(clients, killed_at)}, after the restart {answered_after(clients, restarted_at)}; "
              f"{comparison.summary()}; predictions logged but never received (killed host): "
              f"{len(comparison.ok_unreceived)}; records the restarted host took from its journal: {recovered}")

        assert drained == 0, stopped.log_tail()
        assert closes[1001] >= 1  # the stopped host's clients
        assert sum(count for code, count in closes.items() if code not in (1000, 1001)) >= 1  # the killed host's
        for reconnecting in clients:  # everyone went on through the hosts left, to the end
            last = reconnecting.connections[-1][0]
            assert last.close_code == 1000 and last.replies, (reconnecting.name, last.close_code)
        for client in everyone:
            assert not client.repeated and not client.strays, (client.prefix, client.repeated[:5], client.strays[:5])
        if comparison.missing:
            close_of = {rid: client.close_code for client in everyone for rid in client.sent}
            print(f"Replies without a record: {comparison.missing[:20]}, by the close of their connection "
                  f"{dict(Counter(close_of[rid] for rid in comparison.missing))}; the killed host's files: "
                  f"{sorted(str(path.relative_to(tmp_path)) for path in (tmp_path / killed.name).rglob('*l-*'))}")
        comparison.assert_every_reply_logged_once()
        # A drained connection's accepted requests were all answered before its 1001.
        assert not set(comparison.ok_unreceived) & set(drained_ids)
        logged_ids = {record.request_id for record in logged(module_database)}
        assert {rid for rid, reply in comparison.replies.items() if reply.outcome == "ok"} <= logged_ids
    finally:
        for host in hosts:
            if host.process is not None and host.process.poll() is None:
                host.process.send_signal(signal.SIGTERM)
        for host in hosts:
            if host.process is not None:
                try:
                    host.process.wait(30)
                except Exception:
                    host.process.kill()
        if balancer is not None:
            balancer.stop()
        network.destroy()
