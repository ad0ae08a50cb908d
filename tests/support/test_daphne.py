"""daphne serving the platform in a subprocess: started on the demo models or none, on SQLite or PostgreSQL."""

import json
import urllib.request

import psycopg
import pytest

from tests.support import daphne
from tests.support.processes import ServiceUnavailable

pytestmark = pytest.mark.realservice

DEMO_VERSIONS = {"breast-cancer:1", "diabetes:1", "digits:1", "iris:1"}


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
        daphne.start_daphne(tmp_path, extra_args=["--no-such-option"], timeout_s=30)
