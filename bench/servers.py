"""The servers under test: a prepared data directory, daphne processes on free ports, their prediction log.

Every server runs through ``python -m platform_core.server`` (the platform's
daphne) with the same settings module, in production mode (``DJANGO_DEBUG``
off) and with authentication off so the three applications do the same work
per frame up to where they differ. Given CPUs, a server is started under
``taskset -c``: it and every process it starts (the platform's log writer)
run on those CPUs only.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import procstats
from .pinning import under_taskset

REPO_ROOT = Path(__file__).resolve().parent.parent
WEBSOCKET_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
PREDICT_PATH = "/ws/v1/predict/"

#: What each kind of server serves.
APPLICATIONS = {
    "platform": "platform_core.asgi:application",
    "ceiling": "bench.ceiling:application",
    "naive": "bench.naive:application",
}
#: The demo models the benchmark uses: one scikit-learn, one Keras.
DEMO_MODELS = ("iris", "digits")

# The batcher's and the connection's tuning may be set by whoever runs the
# benchmark; everything else of the caller's DJANGO_/PLATFORM_ environment is
# dropped so a developer's shell cannot change what is measured.
PASSED_THROUGH = (
    "PLATFORM_MAX_DELAY_MS", "PLATFORM_MAX_BATCH_SIZE", "PLATFORM_QUEUE_CAPACITY", "PLATFORM_MAX_IN_FLIGHT",
    "PLATFORM_REQUEST_TIMEOUT_MS", "PLATFORM_LOG_BATCH_SIZE", "PLATFORM_LOG_FLUSH_INTERVAL_MS", "PLATFORM_LOG_WRITER",
    "PLATFORM_LOG_ENABLED", "PLATFORM_LOG_JOURNAL", "PLATFORM_LOG_JOURNAL_FSYNC_MS", "PLATFORM_LEAN_HTTP",
    "PLATFORM_SKLEARN_ONNX",
)
_DROPPED = re.compile(r"^(DJANGO_|PLATFORM_|DATABASE_URL$|REDIS_URL$|PROMETHEUS_MULTIPROC_DIR$)")

START_TIMEOUT_S = 180.0
# A graceful stop answers what is in flight and flushes the prediction log.
STOP_TIMEOUT_S = 60.0


class ServerError(Exception):
    """A server could not be prepared, started or stopped cleanly."""


def server_env(data_dir: Path, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a server on ``data_dir``: production settings, SQLite, authentication off."""
    env = {name: value for name, value in os.environ.items() if not _DROPPED.match(name)}
    env.update({name: os.environ[name] for name in PASSED_THROUGH if name in os.environ})
    env.update(
        DJANGO_SETTINGS_MODULE="platform_core.settings",
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        DJANGO_SECURE_SSL_REDIRECT="0",
        PLATFORM_DATA_DIR=str(data_dir),
        PLATFORM_REQUIRE_API_KEY="0",
        PLATFORM_PRELOAD_MODELS="1",
        KERAS_BACKEND="tensorflow",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides or {})
    return env


def tuning() -> dict[str, str]:
    """The tuning variables passed through to the servers, as set by the caller."""
    return {name: os.environ[name] for name in PASSED_THROUGH if name in os.environ}


def manage(*args: str, env: Mapping[str, str], timeout_s: float = 600.0) -> str:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "manage.py"), *args],
        cwd=REPO_ROOT, env=dict(env), capture_output=True, text=True, timeout=timeout_s,
    )
    if result.returncode != 0:
        raise ServerError(
            f"manage.py {' '.join(args)} exited with status {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result.stdout


def prepare_data(directory: Path) -> Path:
    """Migrate a fresh data directory and train the benchmark's demo models into it (once per run)."""
    data_dir = directory / "prepared"
    env = server_env(data_dir)
    manage("migrate", "--no-input", env=env)
    manage("load_demo_models", *DEMO_MODELS, env=env)
    return data_dir


def copy_data(prepared: Path, data_dir: Path) -> Path:
    """A server's own copy of the prepared data: its prediction log starts empty."""
    shutil.copytree(prepared, data_dir)
    return data_dir


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (callers retry if it is taken since)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 60) -> str:
    """The last ``lines`` lines of a log file, or why it could not be read."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(could not read {path}: {exc})"


@dataclass
class Server:
    """One daphne process serving one of ``APPLICATIONS``."""

    name: str
    kind: str
    port: int
    data_dir: Path
    log: Path
    process: subprocess.Popen[bytes]
    started_in_s: float = 0.0

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{PREDICT_PATH}"

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log, lines)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM (drain, flush the prediction log), then SIGKILL if it has not exited in time."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
                raise ServerError(f"{self.name} did not stop within {timeout_s:.0f} s of SIGTERM; killed it.") from None
        return self.process.returncode


def _ready(url: str) -> bool:
    from websockets.exceptions import WebSocketException
    from websockets.sync.client import connect

    try:
        with connect(url, open_timeout=5, close_timeout=2, compression=None) as ws:
            return '"ready"' in str(ws.recv(timeout=10))
    except (OSError, TimeoutError, WebSocketException):
        return False


def start_server(name: str, kind: str, data_dir: Path, log_dir: Path, env: Mapping[str, str] | None = None,
                 timeout_s: float = START_TIMEOUT_S, cpus: Collection[int] | None = None) -> Server:
    """Start ``kind`` on ``data_dir`` and return once a WebSocket client gets its ``ready`` message.

    ``cpus``, when given, are the only CPUs the server and its children may run on.
    """
    application = APPLICATIONS[kind]
    for attempt in range(3):
        port = free_port()
        log = log_dir / f"{name}.log"
        started = time.monotonic()
        with open(log, "ab") as output:
            process = subprocess.Popen(
                under_taskset(cpus, [sys.executable, "-m", "platform_core.server", "-b", "127.0.0.1", "-p", str(port),
                                     "--websocket-max-message-size", str(WEBSOCKET_MAX_MESSAGE_BYTES), application]),
                cwd=REPO_ROOT, env=server_env(data_dir, env), stdin=subprocess.DEVNULL,
                stdout=output, stderr=subprocess.STDOUT,
            )
        server = Server(name, kind, port, data_dir, log, process)
        deadline = started + timeout_s
        while process.poll() is None and time.monotonic() < deadline:
            if _ready(server.url):
                server.started_in_s = time.monotonic() - started
                return server
            time.sleep(0.5)
        if process.poll() is None:
            process.kill()
            process.wait()
            raise ServerError(f"{name} was not ready after {timeout_s:.0f} s. The end of its log:\n{server.log_tail()}")
        if attempt < 2 and "Address already in use" in server.log_tail():
            continue
        raise ServerError(f"{name} exited with status {process.returncode} before it was ready. "
                          f"The end of its log:\n{server.log_tail()}")
    raise ServerError(f"{name} could not find a free port.")


def wait_idle(pid: int, *, below_cores: float = 0.1, timeout_s: float = 30.0) -> float:
    """Wait until ``pid`` uses less than ``below_cores`` of CPU over half a second; returns the wait.

    Between loads: a server still working through a backlog (the naive one
    queues every message) would otherwise eat into the next load's CPU.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        before = procstats.tree_cpu_s(pid)
        time.sleep(0.5)
        if (procstats.tree_cpu_s(pid) - before) / 0.5 < below_cores:
            break
    return time.monotonic() - started


@dataclass
class LogCheck:
    """How the prediction log compares with the requests a client saw answered."""

    answered: int
    records: int
    distinct_records: int
    missing: int
    duplicates: int
    unexpected: int
    spill_lines: int
    missing_sample: list[str]

    @property
    def exact(self) -> bool:
        return self.missing == 0 and self.duplicates == 0 and self.unexpected == 0

    def as_dict(self) -> dict[str, object]:
        return {**self.__dict__, "exact": self.exact}


def check_prediction_log(data_dir: Path, answered_ids: list[str]) -> LogCheck:
    """Compare the SQLite prediction log of a stopped server with the ids its clients got replies for."""
    database = data_dir / "platform.sqlite3"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        rows = connection.execute("SELECT request_id FROM monitoring_predictionrecord").fetchall()
    logged = [row[0] for row in rows]
    logged_set = set(logged)
    answered_set = set(answered_ids)
    missing = answered_set - logged_set
    spill_lines = 0
    for path in (data_dir / "spill").glob("*.jsonl"):
        with open(path, "rb") as handle:
            spill_lines += sum(1 for _ in handle)
    return LogCheck(
        answered=len(answered_ids),
        records=len(logged),
        distinct_records=len(logged_set),
        missing=len(missing),
        duplicates=len(logged) - len(logged_set),
        unexpected=len(logged_set - answered_set),
        spill_lines=spill_lines,
        missing_sample=sorted(missing)[:10],
    )
