"""The service fixtures themselves: they start what they say, isolate it and clean up after."""

import json
import sqlite3
import urllib.request

import psycopg
import pytest
import redis

from tests.support import services
from tests.support.services import ServiceUnavailable

pytestmark = pytest.mark.realservice

DEMO_VERSIONS = {"breast-cancer:1", "diabetes:1", "digits:1", "iris:1"}


def test_redis_url_is_a_database_of_its_own(redis_url):
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping()
        assert client.connection_pool.connection_kwargs["db"] != 0
        assert client.get("platform-tests:claim") is not None
    finally:
        client.close()


def test_throwaway_redis_answers_until_stopped():
    with services.throwaway_redis() as url:
        assert services.redis_answers(url)
    assert not services.redis_answers(url)


def test_claimed_redis_databases_are_distinct_and_flushed_on_release():
    with services.throwaway_redis() as server_url:
        bystander = redis.Redis.from_url(server_url)
        bystander.set("someone-else", "kept")
        with (
            services.claimed_redis_database(server_url) as first,
            services.claimed_redis_database(server_url) as second,
        ):
            assert first != second
            owned = redis.Redis.from_url(first)
            owned.set("ours", "1")
        assert owned.dbsize() == 0
        assert bystander.get("someone-else") == b"kept"
        owned.close()
        bystander.close()


def test_postgres_url_is_a_throwaway_database(postgres_url):
    with psycopg.connect(postgres_url) as connection:
        name = connection.execute("SELECT current_database()").fetchone()[0]
    assert name.startswith("platform_test_")


def test_throwaway_database_is_dropped_afterwards(postgres_url):
    server_url = services.with_path(postgres_url, "/postgres")
    with services.throwaway_database(server_url) as url:
        assert services.postgres_answers(url)
    assert not services.postgres_answers(url)


def test_throwaway_postgres_cluster_answers_until_stopped():
    with services.throwaway_postgres() as url:
        with psycopg.connect(url) as connection:
            assert connection.execute("SELECT 1 + 1").fetchone() == (2,)
    assert not services.postgres_answers(url)


def test_demo_data_holds_the_four_demo_models(demo_data):
    with sqlite3.connect(demo_data.data_dir / "platform.sqlite3") as connection:
        names = {row[0] for row in connection.execute("SELECT name FROM inference_mlmodel")}
    assert names == {"iris", "breast-cancer", "diabetes", "digits"}
    fixture = json.loads(demo_data.registry_fixture.read_text())
    assert {row["model"] for row in fixture} == {"inference.mlmodel", "inference.modelversion"}


def test_daphne_server_serves_the_demo_models(daphne_server):
    with urllib.request.urlopen(f"{daphne_server.url}/healthz", timeout=10) as response:
        health = json.load(response)
    assert health["ready"] is True
    assert set(health["loaded"]) == DEMO_VERSIONS
    assert health["failed"] == {}
    assert daphne_server.ws_url == f"ws://127.0.0.1:{daphne_server.port}"


def test_start_daphne_stops_the_server_it_started(start_daphne):
    server = start_daphne(demo_models=False)
    assert server.healthz_status() == 200
    server.stop()
    assert server.process.returncode is not None
    assert server.healthz_status() is None


def test_start_daphne_on_postgres_and_redis_with_the_demo_models(start_daphne, postgres_url, redis_url):
    server = start_daphne(env={"DATABASE_URL": postgres_url, "REDIS_URL": redis_url})
    with urllib.request.urlopen(f"{server.url}/healthz", timeout=10) as response:
        assert set(json.load(response)["loaded"]) == DEMO_VERSIONS
    assert not (server.data_dir / "platform.sqlite3").exists()
    with psycopg.connect(postgres_url) as connection:
        versions = connection.execute("SELECT count(*) FROM inference_modelversion").fetchone()[0]
    assert versions == len(DEMO_VERSIONS)


def test_a_server_that_cannot_start_fails_with_the_end_of_its_log(tmp_path):
    with pytest.raises(ServiceUnavailable, match="unrecognized arguments: --no-such-option"):
        services.start_daphne(tmp_path, extra_args=["--no-such-option"], timeout_s=30)


def test_redis_service_starts_a_server_when_none_answers(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setattr(services, "DEFAULT_REDIS_URL", f"redis://127.0.0.1:{services.free_port()}/0")
    with services.redis_service() as url:
        assert services.redis_answers(url)
        assert not services.redis_answers(services.DEFAULT_REDIS_URL)
    assert not services.redis_answers(url)


def test_redis_service_without_a_server_or_a_binary_says_what_to_do(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setattr(services, "DEFAULT_REDIS_URL", f"redis://127.0.0.1:{services.free_port()}/0")
    monkeypatch.setattr(services, "REDIS_SERVER_FALLBACK", "/nonexistent/redis-server")
    monkeypatch.setattr(services.shutil, "which", lambda name: None)
    with pytest.raises(ServiceUnavailable, match="no redis-server binary"):
        with services.redis_service():
            pass


def test_postgres_service_starts_a_cluster_when_none_answers(monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setattr(services, "DEFAULT_POSTGRES_URL", f"postgresql://postgres@127.0.0.1:{services.free_port()}/postgres")
    with services.postgres_service() as url:
        assert services.postgres_answers(url)
    assert not services.postgres_answers(url)


def test_postgres_service_without_a_server_or_binaries_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setattr(services, "DEFAULT_POSTGRES_URL", f"postgresql://postgres@127.0.0.1:{services.free_port()}/postgres")
    monkeypatch.setattr(services, "POSTGRES_INSTALLS", str(tmp_path))
    monkeypatch.setattr(services.shutil, "which", lambda name: None)
    with pytest.raises(ServiceUnavailable, match="no initdb on PATH"):
        with services.postgres_service():
            pass
