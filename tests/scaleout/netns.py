"""Several hosts on this machine: network namespaces on a bridge, each serving the platform, behind HAProxy.

Each host is a network namespace (``ip netns``) joined to a bridge in the
root namespace by a veth pair, with an address of its own; the root
namespace holds the bridge's address, HAProxy (Debian's package) and the
test's clients. The hosts reach the shared Redis and PostgreSQL at the
bridge's address, where HAProxy relays TCP to the servers the test suite
uses on 127.0.0.1 (a namespace has a loopback of its own).

Needs root, iproute2 and haproxy: :func:`require` says what is missing.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from bench.servers import free_port, tail
from tests.support.commands import REPO_ROOT, platform_env
from tests.support.processes import ServiceUnavailable, wait_until

HOST_PORT = 8000
START_TIMEOUT_S = 240.0


class NamespacesUnavailable(Exception):
    """This machine cannot build hosts as network namespaces."""


def run(*command: str) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise NamespacesUnavailable(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def require() -> None:
    """Raise NamespacesUnavailable with what is missing: root, iproute2, haproxy, namespaces themselves."""
    if os.geteuid() != 0:
        raise NamespacesUnavailable("Building hosts as network namespaces needs root (ip netns, veth, a bridge).")
    for tool, package in (("ip", "iproute2"), ("haproxy", "haproxy")):
        if shutil.which(tool) is None:
            raise NamespacesUnavailable(f"{tool} is not installed: install {package} (scripts/system-deps.sh).")
    probe = f"plprobe{os.getpid() % 100000}"
    run("ip", "netns", "add", probe)
    run("ip", "netns", "del", probe)


@dataclass
class Network:
    """A bridge at ``10.<subnet>.0.1/24`` and one namespace per host at ``10.<subnet>.0.<10 + n>``."""

    tag: str
    subnet: int
    namespaces: list[str] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"plbr{self.tag}"

    @property
    def gateway(self) -> str:
        return f"10.{self.subnet}.0.1"

    def address(self, number: int) -> str:
        return f"10.{self.subnet}.0.{10 + number}"

    @classmethod
    def create(cls, hosts: int) -> Network:
        tag = str(os.getpid() % 100000)
        used = run("ip", "-o", "-4", "addr", "show")
        subnet = next(n for n in range(200, 250) if f" 10.{n}.0." not in used)
        network = cls(tag, subnet)
        try:
            run("ip", "link", "add", network.bridge, "type", "bridge")
            run("ip", "addr", "add", f"{network.gateway}/24", "dev", network.bridge)
            run("ip", "link", "set", network.bridge, "up")
            for number in range(1, hosts + 1):
                network.add_host(number)
        except NamespacesUnavailable:
            network.destroy()
            raise
        return network

    def add_host(self, number: int) -> None:
        namespace, outside = f"pl{self.tag}h{number}", f"pl{self.tag}v{number}"
        run("ip", "netns", "add", namespace)
        self.namespaces.append(namespace)
        run("ip", "link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        run("ip", "link", "set", outside, "master", self.bridge, "up")
        inside = ("ip", "netns", "exec", namespace, "ip")
        run(*inside, "addr", "add", f"{self.address(number)}/24", "dev", "eth0")
        run(*inside, "link", "set", "eth0", "up")
        run(*inside, "link", "set", "lo", "up")
        run(*inside, "route", "add", "default", "via", self.gateway)

    def pids(self, namespace: str) -> list[int]:
        return [int(pid) for pid in run("ip", "netns", "pids", namespace).split()]

    def destroy(self) -> None:
        for namespace in self.namespaces:
            for pid in self.pids(namespace):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)  # takes the veth ends with it


@dataclass
class Host:
    """The platform with its workers in one namespace, on a data directory (and journal) of its own."""

    name: str
    namespace: str
    address: str
    env: dict[str, str]
    log: Path
    workers: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{HOST_PORT}"

    def start(self) -> None:
        command = ["ip", "netns", "exec", self.namespace, sys.executable, "-m", "platform_core.server",
                   "--workers", str(self.workers), "-b", "0.0.0.0", "-p", str(HOST_PORT),
                   "platform_core.asgi:application"]
        with open(self.log, "ab") as output:
            self.process = subprocess.Popen(command, cwd=REPO_ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                            stdout=output, stderr=subprocess.STDOUT)
        wait_until(self.healthy, timeout_s=START_TIMEOUT_S, what=f"host {self.name}", process=self.process,
                   log=self.log, interval_s=0.25)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log, lines)


def host_env(data_dir: Path, models: Path, address: str, database_url: str, redis_url: str) -> dict[str, str]:
    """A host's environment: its own data directory with a copy of the models, the shared services by URL."""
    shutil.copytree(models, data_dir / "models", dirs_exist_ok=True)
    return platform_env(data_dir, {"DATABASE_URL": database_url, "REDIS_URL": redis_url,
                                   "DJANGO_ALLOWED_HOSTS": f"localhost,127.0.0.1,{address}"})


def relayed(url: str, gateway: str, port: int) -> str:
    """``url`` with its host and port replaced by the relay's."""
    parts = urlsplit(url)
    credentials = f"{parts.username}@" if parts.username else ""
    return parts._replace(netloc=f"{credentials}{gateway}:{port}").geturl()


@dataclass
class Balancer:
    """HAProxy in the root namespace: WebSockets to the hosts, and TCP relays to Redis and PostgreSQL."""

    config: Path
    log: Path
    port: int
    redis_relay: int
    postgres_relay: int
    stats_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @classmethod
    def write(cls, directory: Path, network: Network, hosts: list[tuple[str, str]], redis_url: str,
              postgres_url: str) -> Balancer:
        balancer = cls(directory / "haproxy.cfg", directory / "haproxy.log", free_port(), free_port(), free_port(),
                       free_port())
        redis, postgres = urlsplit(redis_url), urlsplit(postgres_url)
        servers = "\n".join(f"    server {name} {address}:{HOST_PORT} check" for name, address in hosts)
        balancer.config.write_text(f"""\
global
    maxconn 4096

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    option redispatch
    retries 3

frontend platform
    bind 127.0.0.1:{balancer.port}
    default_backend hosts

backend hosts
    balance leastconn
    option httpchk
    http-check send meth GET uri /v2/health/ready ver HTTP/1.1 hdr Host localhost
    default-server inter 500ms fall 2 rise 2
{servers}

listen stats
    bind 127.0.0.1:{balancer.stats_port}
    stats enable
    stats uri /stats

listen redis
    mode tcp
    timeout client 1h
    timeout server 1h
    bind {network.gateway}:{balancer.redis_relay}
    server redis {redis.hostname}:{redis.port or 6379}

listen postgres
    mode tcp
    timeout client 1h
    timeout server 1h
    bind {network.gateway}:{balancer.postgres_relay}
    server postgres {postgres.hostname}:{postgres.port or 5432}
""")
        return balancer

    def start(self) -> None:
        with open(self.log, "ab") as output:
            self.process = subprocess.Popen(["haproxy", "-db", "-f", str(self.config)], stdout=output,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        time.sleep(0.5)
        if self.process.poll() is not None:
            raise ServiceUnavailable(f"HAProxy exited with {self.process.returncode}:\n{tail(self.log)}")

    def server_states(self) -> dict[str, str]:
        """HAProxy's view of each host: ``UP``, ``DOWN``, ``MAINT``, ..."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=5) as response:
            rows = list(csv.DictReader(response.read().decode().lstrip("# ").splitlines()))
        return {row["svname"]: row["status"] for row in rows
                if row["pxname"] == "hosts" and row["svname"] not in ("FRONTEND", "BACKEND")}

    def wait_until_up(self, names: list[str], timeout_s: float = 30.0) -> None:
        wait_until(lambda: all(self.server_states().get(name) == "UP" for name in names), timeout_s=timeout_s,
                   what=f"HAProxy seeing {', '.join(names)} up", process=self.process, log=self.log)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
