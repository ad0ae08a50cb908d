"""docker-compose.yml: HAProxy in front of replicas that scale, with deploy/haproxy/haproxy.cfg checked by HAProxy.

Docker is not needed: the file is read with PyYAML, the HAProxy config is
checked by the real ``haproxy -c`` and the replicas' entrypoint script is run
by the real ``sh``.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest
import yaml

from tests.support.commands import REPO_ROOT

from .haproxy_config import HAPROXY_CFG, directive, haproxy_check, sections
from .health import get

COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
#: Where the official haproxy image reads its configuration.
IMAGE_CONFIG = "/usr/local/etc/haproxy/haproxy.cfg"


def server_port() -> int:
    """The port platform-serve (the image's command) listens on."""
    return int(re.search(r"platform_core\.server .*-p (\d+)", (REPO_ROOT / "Dockerfile").read_text()).group(1))


def test_haproxy_accepts_the_config():
    result = haproxy_check(HAPROXY_CFG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stdout + result.stderr, result.stdout + result.stderr


def test_haproxy_refuses_a_broken_config(tmp_path):
    broken = tmp_path / "haproxy.cfg"
    broken.write_text(HAPROXY_CFG.read_text().replace("balance leastconn", "balance fewest"))
    assert haproxy_check(broken).returncode != 0


def test_the_platform_scales_behind_haproxy_which_alone_publishes_the_port():
    platform, haproxy = SERVICES["platform"], SERVICES["haproxy"]
    # A fixed host port or container name would stop `--scale platform=N` at one replica.
    assert "ports" not in platform and "container_name" not in platform
    assert re.fullmatch(r"haproxy:[\d.]+-bookworm", haproxy["image"])
    assert f"./deploy/haproxy/haproxy.cfg:{IMAGE_CONFIG}:ro" in haproxy["volumes"]
    [published] = haproxy["ports"]
    frontend = sections(HAPROXY_CFG.read_text())["frontend platform"]
    assert published.endswith(":" + directive(frontend, "bind")[0].split(":")[-1])
    assert haproxy["depends_on"]["platform"]["condition"] == "service_healthy"


def test_haproxy_finds_every_replica_of_the_platform_service_on_its_port():
    config = sections(HAPROXY_CFG.read_text())
    backend = config["backend platform"]
    [template] = directive(backend, "server-template")
    _, _, count, address = template.split()
    assert address == f"platform:{server_port()}" and "platform" in SERVICES
    assert int(count.split("-")[-1]) >= 3
    defaults = directive(backend, "default-server")[0].split()
    assert "check" in defaults and defaults[defaults.index("resolvers") + 1] == "docker"
    assert "nameserver docker 127.0.0.11:53" in config["resolvers docker"]  # Docker's embedded DNS
    # A failed check stops new connections only: a draining replica answers its open ones itself.
    assert "on-marked-down" not in " ".join(backend)
    assert directive(backend, "balance") == ["balance leastconn"]


async def test_the_health_check_asks_the_readiness_endpoint():
    backend = sections(HAPROXY_CFG.read_text())["backend platform"]
    [send] = directive(backend, "http-check send")
    path = send.split()[send.split().index("uri") + 1]
    assert directive(backend, "http-check expect") == ["http-check expect status 200"]
    status, body = await get(path)
    assert (status, yaml.safe_load(body)) in ((200, {"ready": True}), (503, {"ready": False}))


def seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h|d)?", value).groups()
    return int(number) * {"ms": 0.001, "s": 1, None: 0.001, "m": 60, "h": 3600, "d": 86400}[unit]


def test_websockets_may_stay_open_for_long():
    defaults = {line.split()[1]: line.split()[2] for line in directive(sections(HAPROXY_CFG.read_text())["defaults"],
                                                                       "timeout")}
    assert seconds(defaults["tunnel"]) >= 15 * 60
    assert seconds(defaults["connect"]) <= 10
    assert {"client", "server", "http-request"} <= set(defaults)


def test_prometheus_scrapes_every_replica_and_haproxy():
    config = yaml.safe_load((REPO_ROOT / "monitoring" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    [discovery] = jobs["platform"]["dns_sd_configs"]
    assert discovery["names"] == ["platform"] and discovery["type"] == "A" and discovery["port"] == server_port()
    [stats] = jobs["haproxy"]["static_configs"]
    frontend = sections(HAPROXY_CFG.read_text())["frontend stats"]
    port = directive(frontend, "bind")[0].split(":")[-1]
    assert stats["targets"] == [f"haproxy:{port}"]
    assert any("prometheus-exporter" in line for line in frontend)


def test_migrations_run_once_before_the_replicas():
    migrate, platform = SERVICES["migrate"], SERVICES["platform"]
    assert migrate["image"] == platform["image"] == "inference-platform:latest"
    assert "manage.py migrate" in " ".join(migrate["command"])
    assert platform["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


@pytest.fixture
def entrypoint_output(tmp_path):
    """What the replicas' entrypoint hands platform-serve, run by sh as Docker would (``$$`` is Compose's ``$``)."""
    platform = SERVICES["platform"]
    shell, flag, script, name = platform["entrypoint"]
    env = {**os.environ, "DJANGO_ALLOWED_HOSTS": "localhost,platform"}
    show = ["sh", "-c", 'echo "$DJANGO_ALLOWED_HOSTS"; echo "$PLATFORM_LOG_JOURNAL_DIR"; '
            'echo "$PLATFORM_LOG_SPILL_DIR"; hostname; hostname -i']
    result = subprocess.run([shell, flag, script.replace("$$", "$"), name, *show], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert platform["command"] == ["platform-serve"]  # what "$@" runs in the container
    return result.stdout.splitlines()


def test_each_replica_allows_its_own_address_and_keeps_its_own_journal(entrypoint_output):
    hosts, journal, spill, hostname, addresses = entrypoint_output
    assert hosts.split(",") == ["localhost", "platform", *addresses.split()]
    assert journal == f"/var/lib/platform/replicas/{hostname}/journal"
    assert spill == f"/var/lib/platform/replicas/{hostname}/spill"
    # On the volume the replicas share, and so kept across a restart of the container.
    assert "platform-data:/var/lib/platform" in SERVICES["platform"]["volumes"]
