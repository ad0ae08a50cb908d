"""Real services for the tests: Redis, PostgreSQL and daphne, reused when running, started otherwise.

Every helper here is a context manager or a function that raises
``ServiceUnavailable`` with a message saying what went wrong; the fixtures in
``tests/conftest.py`` turn that into a test failure, never a skip.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from bench.servers import free_port, tail

REPO_ROOT = Path(__file__).resolve().parents[2]
MANAGE_PY = REPO_ROOT / "manage.py"
ASGI_APPLICATION = "platform_core.asgi:application"

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

# Importing TensorFlow and warming up every demo model takes a while on a cold machine.
DAPHNE_START_TIMEOUT_S = 120.0
WEBSOCKET_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class ServiceUnavailable(Exception):
    """A real service the tests need could be neither reused nor started."""


class CommandFailed(Exception):
    """A ``manage.py`` command run in a subprocess exited with an error."""

    def __init__(self, message: str, result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(message)
        self.result = result


# -- small utilities -------------------------------------------------------------


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout_s: float,
    what: str,
    process: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
    interval_s: float = 0.1,
) -> None:
    """Poll ``ready`` until it returns true; raise if ``process`` exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        if ready():
            return
        if process is not None and process.poll() is not None:
            raise ServiceUnavailable(
                f"{what} exited with status {process.returncode} before it was ready."
                + (f" The end of its log ({log}):\n{tail(log)}" if log else "")
            )
        if time.monotonic() >= deadline:
            raise ServiceUnavailable(
                f"{what} was not ready after {timeout_s:.0f} s."
                + (f" The end of its log ({log}):\n{tail(log)}" if log else "")
            )
        time.sleep(interval_s)


def stop_process(process: subprocess.Popen[bytes], *, grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if the process has not exited after ``grace_s``."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=grace_s)


def with_path(url: str, path: str) -> str:
    """``url`` with its path replaced, e.g. another database on the same server."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


# -- Redis -------------------------------------------------------------------------

_REDIS_CLAIM_KEY = "platform-tests:claim"
# Long enough for any test session; a crashed session's claim expires on its own.
_REDIS_CLAIM_TTL_S = 6 * 3600


def redis_answers(url: str) -> bool:
    """True when a Redis server at ``url`` answers PING."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


REDIS_SERVER_FALLBACK = "/usr/bin/redis-server"


def redis_server_binary() -> str:
    binary = shutil.which("redis-server") or (REDIS_SERVER_FALLBACK if os.path.exists(REDIS_SERVER_FALLBACK) else None)
    if binary is None:
        raise ServiceUnavailable(
            "No Redis server answers at $REDIS_URL or 127.0.0.1:6379, and there is no redis-server "
            "binary on PATH to start one; install it (scripts/system-deps.sh) or set REDIS_URL."
        )
    return binary


@contextlib.contextmanager
def throwaway_redis(*, start_timeout_s: float = 30.0) -> Iterator[str]:
    """Start a Redis server that keeps nothing on disk, yield its URL, stop it afterwards."""
    binary = redis_server_binary()
    directory = Path(tempfile.mkdtemp(prefix="platform-redis-"))
    log = directory / "redis.log"
    try:
        attempt = 0
        while True:
            attempt += 1
            port = free_port()
            process = subprocess.Popen(
                [
                    binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                    "--dir", str(directory), "--logfile", str(log), "--daemonize", "no",
                ],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            url = f"redis://127.0.0.1:{port}/0"
            try:
                wait_until(lambda url=url: redis_answers(url), timeout_s=start_timeout_s, what="redis-server",
                           process=process, log=log)
                break
            except ServiceUnavailable:
                stop_process(process)
                # Another process took the port between free_port() and redis-server binding it.
                if attempt < 3 and "Address already in use" in tail(log):
                    continue
                raise
        try:
            yield url
        finally:
            stop_process(process)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def claimed_redis_database(server_url: str) -> Iterator[str]:
    """Yield the URL of an empty logical database claimed for this session, flushed afterwards.

    Database 0, where everyone else's data lives by default, is never used. A
    database is ours when we set the claim key in it and it holds nothing else,
    so two test sessions sharing one server never share a database.
    """
    import redis

    token = uuid.uuid4().hex
    admin = redis.Redis.from_url(server_url, socket_connect_timeout=2, socket_timeout=5)
    try:
        try:
            databases = int(admin.config_get("databases").get("databases", 16))
        except redis.ResponseError:  # CONFIG is disabled on some managed servers
            databases = 16
    finally:
        admin.close()

    claimed: redis.Redis | None = None
    for number in range(databases - 1, 0, -1):
        client = redis.Redis.from_url(with_path(server_url, f"/{number}"), socket_connect_timeout=2, socket_timeout=5)
        if client.set(_REDIS_CLAIM_KEY, token, nx=True, ex=_REDIS_CLAIM_TTL_S) and client.dbsize() == 1:
            claimed = client
            break
        if client.get(_REDIS_CLAIM_KEY) == token.encode():
            client.delete(_REDIS_CLAIM_KEY)
        client.close()
    if claimed is None:
        raise ServiceUnavailable(
            f"Every logical database 1-{databases - 1} of the Redis server at {server_url} holds data; "
            "the tests need an empty one of their own. Set REDIS_URL to another server."
        )
    try:
        yield with_path(server_url, f"/{number}")
    finally:
        if claimed.get(_REDIS_CLAIM_KEY) == token.encode():
            claimed.flushdb()
        claimed.close()


@contextlib.contextmanager
def redis_service() -> Iterator[str]:
    """Yield the URL of a Redis database for this session: on a running server if there is one."""
    candidates = [url for url in (os.environ.get("REDIS_URL"), DEFAULT_REDIS_URL) if url]
    running = next((url for url in candidates if redis_answers(url)), None)
    with contextlib.ExitStack() as stack:
        server_url = running or stack.enter_context(throwaway_redis())
        yield stack.enter_context(claimed_redis_database(server_url))


# -- PostgreSQL --------------------------------------------------------------------


def postgres_answers(url: str) -> bool:
    """True when ``url`` accepts a connection and a query."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=2) as connection:
            connection.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


POSTGRES_INSTALLS = "/usr/lib/postgresql"


def postgres_binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    installed = sorted(
        glob.glob(f"{POSTGRES_INSTALLS}/*/bin/{name}"),
        key=lambda path: [int(part) for part in re.findall(r"\d+", path)],
    )
    if not installed:
        raise ServiceUnavailable(
            f"No PostgreSQL answers at $DATABASE_URL or 127.0.0.1:5432, and there is no {name} on PATH "
            "or under /usr/lib/postgresql/*/bin to start one; install PostgreSQL (scripts/system-deps.sh) "
            "or set DATABASE_URL."
        )
    return installed[-1]


def _as_cluster_owner(command: list[str]) -> tuple[list[str], pwd.struct_passwd | None]:
    """initdb and postgres refuse to run as root: run them as the ``postgres`` user then."""
    if os.geteuid() != 0:
        return command, None
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceUnavailable(
            "The tests run as root, and PostgreSQL refuses to run as root, but there is no 'postgres' "
            "user to start a throwaway cluster as; create one or set DATABASE_URL."
        ) from None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise ServiceUnavailable("The tests run as root and need runuser to start PostgreSQL as 'postgres'.")
    return [runuser, "-u", "postgres", "--", *command], owner


def _run_cluster_command(command: list[str], *, cwd: Path, what: str) -> None:
    wrapped, _ = _as_cluster_owner(command)
    result = subprocess.run(wrapped, cwd=cwd, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise ServiceUnavailable(
            f"{what} failed with status {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )


@contextlib.contextmanager
def throwaway_postgres(*, start_timeout_s: float = 60.0) -> Iterator[str]:
    """initdb a cluster in a temporary directory, start it on a free port, yield its URL, stop it."""
    initdb, pg_ctl = postgres_binary("initdb"), postgres_binary("pg_ctl")
    directory = Path(tempfile.mkdtemp(prefix="platform-postgres-"))
    _, owner = _as_cluster_owner([])
    if owner is not None:
        os.chown(directory, owner.pw_uid, owner.pw_gid)
    data, log = directory / "data", directory / "postgres.log"
    try:
        _run_cluster_command(
            [initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"],
            cwd=directory, what="initdb",
        )
        started = False
        try:
            for attempt in range(3):
                port = free_port()
                options = f"-c listen_addresses=127.0.0.1 -p {port} -k {directory} -c fsync=off"
                try:
                    _run_cluster_command(
                        [pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w",
                         "-t", str(int(start_timeout_s)), "start"],
                        cwd=directory, what="pg_ctl start",
                    )
                except ServiceUnavailable as exc:
                    if attempt < 2 and "already in use" in tail(log):
                        continue
                    raise ServiceUnavailable(f"{exc}\nThe end of the server log:\n{tail(log)}") from None
                started = True
                break
            url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
            wait_until(lambda: postgres_answers(url), timeout_s=start_timeout_s, what="PostgreSQL", log=log)
            yield url
        finally:
            if started:
                _run_cluster_command([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                                     cwd=directory, what="pg_ctl stop")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def throwaway_database(server_url: str) -> Iterator[str]:
    """Create a uniquely named database on ``server_url``, yield its URL, drop it afterwards."""
    import psycopg
    from psycopg import sql

    name = f"platform_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True, connect_timeout=5) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_path(server_url, f"/{name}")
    finally:
        with psycopg.connect(server_url, autocommit=True, connect_timeout=5) as connection:
            # FORCE ends connections a server under test may still hold open.
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextlib.contextmanager
def postgres_service() -> Iterator[str]:
    """Yield the URL of a throwaway database: on a running server if there is one."""
    candidates = [url for url in (os.environ.get("DATABASE_URL"), DEFAULT_POSTGRES_URL) if url]
    candidates = [url for url in candidates if url.startswith(("postgres://", "postgresql://"))]
    running = next((url for url in candidates if postgres_answers(url)), None)
    with contextlib.ExitStack() as stack:
        server_url = running or stack.enter_context(throwaway_postgres())
        yield stack.enter_context(throwaway_database(server_url))


# -- the platform in subprocesses -----------------------------------------------------

# Variables of the test process that must not leak into a server under test:
# tests/settings.py sets some of them, and a developer's shell may set others.
_PARENT_ONLY = re.compile(r"^(DJANGO_|PLATFORM_|DATABASE_URL$|REDIS_URL$|PYTEST_)")


def platform_env(data_dir: Path, overrides: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The environment of a platform process on its embedded defaults, with ``overrides`` on top.

    An override of ``None`` removes the variable, e.g. ``{"DJANGO_DEBUG": None}``
    for production mode.
    """
    env = {name: value for name, value in os.environ.items() if not _PARENT_ONLY.match(name)}
    env.update(
        DJANGO_SETTINGS_MODULE="platform_core.settings",
        DJANGO_DEBUG="1",
        PLATFORM_DATA_DIR=str(data_dir),
        PLATFORM_PRELOAD_MODELS="1",
        PYTHONUNBUFFERED="1",
        KERAS_BACKEND="tensorflow",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    for name, value in (overrides or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def manage(
    *args: str, env: Mapping[str, str], timeout_s: float = 300.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``manage.py`` with ``args`` in a subprocess; raise ``CommandFailed`` if ``check`` and it fails."""
    result = subprocess.run(
        [sys.executable, str(MANAGE_PY), *args],
        cwd=REPO_ROOT, env=dict(env), capture_output=True, text=True, timeout=timeout_s,
    )
    if check and result.returncode != 0:
        raise CommandFailed(
            f"manage.py {' '.join(args)} exited with status {result.returncode}:\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}",
            result,
        )
    return result


@dataclass(frozen=True)
class DemoData:
    """A data directory migrated and holding the trained demo models; copy it, never serve it."""

    data_dir: Path
    env: dict[str, str]
    registry_fixture: Path

    def copy_to(self, data_dir: Path, *, with_database: bool = True) -> None:
        """Copy the model store, and unless told otherwise the SQLite database, into ``data_dir``."""
        if with_database:
            shutil.copytree(self.data_dir, data_dir, dirs_exist_ok=True)
        else:
            shutil.copytree(self.data_dir / "models", data_dir / "models", dirs_exist_ok=True)


def prepare_demo_data(directory: Path) -> DemoData:
    """Migrate a fresh data directory and train the demo models into it."""
    data_dir = directory / "data"
    env = platform_env(data_dir)
    manage("migrate", "--no-input", env=env)
    manage("load_demo_models", env=env)
    # The registry rows, to load into another database (e.g. PostgreSQL) next to a copy of the files.
    registry_fixture = directory / "demo-registry.json"
    manage("dumpdata", "inference.mlmodel", "inference.modelversion", "--output", str(registry_fixture), env=env)
    return DemoData(data_dir=data_dir, env=env, registry_fixture=registry_fixture)


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
        "--websocket-max-message-size", str(WEBSOCKET_MAX_MESSAGE_BYTES),
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
