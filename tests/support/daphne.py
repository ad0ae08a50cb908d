"""The platform served by daphne in a subprocess, started on a fresh data directory."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.servers import free_port, tail
from tests.support.commands import REPO_ROOT, CommandFailed, DemoData, manage, platform_env
from tests.support.processes import ServiceUnavailable, stop_process, wait_until

ASGI_APPLICATION = "platform_core.asgi:application"
# Importing TensorFlow and warming up every demo model takes a while on a cold machine.
DAPHNE_START_TIMEOUT_S = 120.0


@dataclass
class DaphneServer:
    """A daphne process serving the platform on 127.0.0.1."""

    port: int
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return Path(self.env["PLATFORM_DATA_DIR"])

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log, lines)

    def healthz_status(self) -> int | None:
        """The status of ``GET /healthz``, or None when nothing answers."""
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, OSError):
            return None

    def wait_until_healthy(self, timeout_s: float) -> None:
        statuses: list[int | None] = []

        def healthy() -> bool:
            statuses.append(self.healthz_status())
            return statuses[-1] == 200

        try:
            wait_until(healthy, timeout_s=timeout_s, what=f"daphne on port {self.port}",
                       process=self.process, log=self.log, interval_s=0.25)
        except ServiceUnavailable as exc:
            last = statuses[-1] if statuses else None
            raise ServiceUnavailable(f"{exc}\nThe last GET /healthz answered {last}.") from None

    def stop(self) -> None:
        stop_process(self.process)


def daphne_command(port: int, extra_args: Sequence[str] = ()) -> list[str]:
    return [
        sys.executable, "-m", "platform_core.server", "-b", "127.0.0.1", "-p", str(port),
        *extra_args, ASGI_APPLICATION,
    ]


def start_daphne(
    directory: Path,
    *,
    env: Mapping[str, str | None] | None = None,
    extra_args: Sequence[str] = (),
    demo: DemoData | None = None,
    timeout_s: float = DAPHNE_START_TIMEOUT_S,
) -> DaphneServer:
    """Start daphne on a fresh data directory under ``directory`` and return once /healthz answers 200.

    The database (SQLite in the data directory, or ``DATABASE_URL`` from
    ``env``) is migrated first. With ``demo``, the server starts with a copy of
    the trained demo models. The caller stops the server.
    """
    data_dir = directory / "data"
    server_env = platform_env(data_dir, env)
    data_dir = Path(server_env["PLATFORM_DATA_DIR"])
    if demo is not None:
        demo.copy_to(data_dir, with_database=not server_env.get("DATABASE_URL"))
    try:
        manage("migrate", "--no-input", env=server_env)
        if demo is not None and server_env.get("DATABASE_URL"):
            manage("loaddata", str(demo.registry_fixture), env=server_env)
    except CommandFailed as exc:
        raise ServiceUnavailable(f"Could not prepare the database for daphne: {exc}") from None

    attempt = 0
    while True:
        attempt += 1
        port = free_port()
        log = directory / f"daphne-{port}.log"
        with open(log, "wb") as output:
            process = subprocess.Popen(
                daphne_command(port, extra_args), cwd=REPO_ROOT, env=server_env,
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            )
        server = DaphneServer(port=port, env=server_env, log=log, process=process)
        try:
            server.wait_until_healthy(timeout_s)
            return server
        except ServiceUnavailable:
            server.stop()
            # Another process took the port between free_port() and daphne binding it.
            if attempt < 3 and "Address already in use" in tail(log):
                continue
            raise
