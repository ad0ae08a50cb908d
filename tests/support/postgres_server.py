"""PostgreSQL for the tests: the configured server when it answers, else a throwaway cluster.

``DATABASE_URL`` names the server to reuse
(``postgresql://postgres@127.0.0.1:5432/postgres`` when it is unset or names
another database engine). When nothing answers there, ``throwaway_postgres``
starts a cluster with pytest-postgresql's ``PostgreSQLExecutor`` (initdb,
``pg_ctl start -w``, stop). Tests get databases of their own from
``throwaway_database``, which pytest-postgresql's ``DatabaseJanitor`` creates
and drops.

pytest-postgresql's ``postgresql_proc`` fixture is not used (the plugin's
fixtures are disabled in pyproject.toml): PostgreSQL refuses to run as root,
and that fixture puts the cluster under pytest's base temporary directory,
which pytest makes private to the user running the tests. When the tests run
as root, as CI does here, the ``postgres`` user the server must run as could
not reach it, and the plugin leaves running as root out of its scope
(dbfixtures/pytest-postgresql#341, #455). So the executor gets a cluster
directory of its own, owned by that user, and ``pg_ctl`` runs through
``runuser`` when the tests run as root.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from mirakuru.exceptions import ExecutorError
from psycopg.conninfo import conninfo_to_dict
from pytest_postgresql.executors import PostgreSQLExecutor
from pytest_postgresql.janitor import DatabaseJanitor

from bench.servers import free_port, tail
from tests.support.processes import ServiceUnavailable
from tests.support.urls import configured_url, with_path

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
# Debian installs the server binaries here, one directory per major version, none of them on PATH.
POSTGRES_INSTALLS = "/usr/lib/postgresql"


def postgres_answers(url: str) -> bool:
    """True when ``url`` accepts a connection and a query."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=2) as connection:
            connection.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def postgres_server_url(request: pytest.FixtureRequest) -> str:
    """The URL of a running server: the configured one if it answers, else the session's ``postgres_cluster``."""
    configured = configured_url("DATABASE_URL", DEFAULT_POSTGRES_URL, schemes=("postgres", "postgresql"))
    if postgres_answers(configured):
        return configured
    try:
        return request.getfixturevalue("postgres_cluster")
    except Exception as exc:  # ServiceUnavailable, or an error of the fixture machinery itself
        raise ServiceUnavailable(
            f"No PostgreSQL answers at {configured} (set DATABASE_URL to reuse another), and no throwaway "
            f"cluster could be started: {exc}"
        ) from exc


def pg_ctl_binary() -> str:
    """``pg_ctl`` on PATH, else the newest version under ``POSTGRES_INSTALLS``."""
    found = shutil.which("pg_ctl")
    if found:
        return found
    installed = sorted(
        glob.glob(f"{POSTGRES_INSTALLS}/*/bin/pg_ctl"),
        key=lambda path: [int(part) for part in re.findall(r"\d+", path)],
    )
    if not installed:
        raise ServiceUnavailable(
            f"There is no pg_ctl on PATH or under {POSTGRES_INSTALLS}/*/bin to start a cluster with; "
            "install PostgreSQL (scripts/system-deps.sh)."
        )
    return installed[-1]


def _pg_ctl_for_cluster_owner(directory: Path, cluster: Path) -> str:
    """``pg_ctl``; as root, a script in ``directory`` that runs it as ``postgres``, the new owner of ``cluster``."""
    pg_ctl = pg_ctl_binary()
    if os.geteuid() != 0:
        return pg_ctl
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceUnavailable(
            "The tests run as root, PostgreSQL refuses to, and there is no 'postgres' user to run it as; "
            "create one or set DATABASE_URL."
        ) from None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise ServiceUnavailable("The tests run as root and need runuser to run PostgreSQL as 'postgres'.")
    os.chown(cluster, owner.pw_uid, owner.pw_gid)
    directory.chmod(0o711)  # postgres may pass through to its cluster, but not touch the script
    script = directory / "pg_ctl"
    script.write_text(
        "#!/bin/sh\n"
        f"cd {shlex.quote(str(cluster))} && exec {shlex.quote(runuser)} -u postgres -- {shlex.quote(pg_ctl)} \"$@\"\n"
    )
    script.chmod(0o700)
    return str(script)


@contextlib.contextmanager
def throwaway_postgres(*, start_timeout_s: int = 60) -> Iterator[str]:
    """initdb a cluster in a temporary directory, start it on a free port, yield its URL, stop and remove it."""
    directory = Path(tempfile.mkdtemp(prefix="platform-postgres-"))
    cluster = directory / "cluster"
    cluster.mkdir()
    log = cluster / "postgresql.log"
    try:
        executor = PostgreSQLExecutor(
            executable=_pg_ctl_for_cluster_owner(directory, cluster),
            host="127.0.0.1",
            port=free_port(),
            user="postgres",
            dbname="postgres",
            datadir=str(cluster / "data"),
            unixsocketdir=str(cluster),
            logfile=str(log),
            startparams="-w",
            timeout=start_timeout_s,
        )
        try:
            executor.start()
        except (ExecutorError, OSError, subprocess.SubprocessError) as exc:
            raise ServiceUnavailable(
                f"PostgreSQL did not start: {exc}\nThe end of its log ({log}):\n{tail(log)}"
            ) from exc
        try:
            yield f"postgresql://postgres@127.0.0.1:{executor.port}/postgres"
        finally:
            executor.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def throwaway_database(server_url: str) -> Iterator[str]:
    """Create a uniquely named database on ``server_url``, yield its URL, drop it afterwards.

    Connections a server under test still holds to it are ended before the drop.
    """
    server = conninfo_to_dict(server_url)
    name = f"platform_test_{uuid.uuid4().hex[:12]}"
    janitor = DatabaseJanitor(
        user=server.get("user") or "postgres",
        password=server.get("password"),
        host=server.get("host") or "127.0.0.1",
        port=server.get("port") or 5432,
        dbname=name,
        maintenance_dbname=server.get("dbname") or "postgres",
        connection_timeout=10,
    )
    with janitor:
        yield with_path(server_url, f"/{name}")
