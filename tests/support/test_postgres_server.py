"""PostgreSQL for the tests: the configured server reused when it answers, else a throwaway cluster."""

import psycopg
import pytest

from bench.servers import free_port
from tests.support import postgres_server
from tests.support.postgres_server import postgres_answers, postgres_server_url, throwaway_database, throwaway_postgres
from tests.support.processes import ServiceUnavailable
from tests.support.urls import with_path

pytestmark = pytest.mark.realservice


class NothingToStart:
    """A fixture request that fails the test if a cluster is started."""

    def getfixturevalue(self, name: str) -> None:
        raise AssertionError(f"{name} was asked for although a server answers")


def test_postgres_url_is_a_throwaway_database(postgres_url):
    with psycopg.connect(postgres_url) as connection:
        name = connection.execute("SELECT current_database()").fetchone()[0]
    assert name.startswith("platform_test_")


def test_throwaway_database_is_dropped_afterwards(postgres_url):
    with throwaway_database(with_path(postgres_url, "/postgres")) as url:
        assert postgres_answers(url)
    assert not postgres_answers(url)


def test_throwaway_database_is_dropped_while_a_connection_is_still_open(postgres_url):
    with throwaway_database(with_path(postgres_url, "/postgres")) as url:
        left_open = psycopg.connect(url)
    try:
        assert not postgres_answers(url)
    finally:
        left_open.close()


def test_throwaway_postgres_cluster_answers_until_stopped():
    with throwaway_postgres() as url:
        with psycopg.connect(url) as connection:
            assert connection.execute("SELECT 1 + 1").fetchone() == (2,)
    assert not postgres_answers(url)


def test_a_cluster_is_started_when_none_answers_at_database_url(monkeypatch, request):
    nothing = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    monkeypatch.setenv("DATABASE_URL", nothing)
    url = postgres_server_url(request)
    assert url == request.getfixturevalue("postgres_cluster")
    assert postgres_answers(url)
    assert not postgres_answers(nothing)


def test_a_database_url_that_is_not_postgresql_leaves_the_default_server(monkeypatch, postgres_url):
    server = with_path(postgres_url, "/postgres")
    monkeypatch.setattr(postgres_server, "DEFAULT_POSTGRES_URL", server)
    monkeypatch.setenv("DATABASE_URL", "sqlite:///platform.sqlite3")
    assert postgres_server_url(NothingToStart()) == server


def test_without_pg_ctl_a_cluster_cannot_start_and_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(postgres_server, "POSTGRES_INSTALLS", str(tmp_path))
    with pytest.raises(ServiceUnavailable, match="no pg_ctl on PATH"):
        with throwaway_postgres():
            pass
