"""Redis for the tests: the configured server reused when it answers, else one started; a database of our own."""

import os
import subprocess
import sys

import pytest
import redis

from bench.servers import free_port
from tests.support.commands import REPO_ROOT
from tests.support.redis_server import CLAIM_KEY, claimed_redis_database, redis_answers, redis_server_url

pytestmark = pytest.mark.realservice


class NothingToStart:
    """A fixture request that fails the test if a server is started."""

    def getfixturevalue(self, name: str) -> None:
        raise AssertionError(f"{name} was asked for although the configured server answers")


def test_redis_url_is_a_database_of_its_own(redis_url):
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping()
        assert client.connection_pool.connection_kwargs["db"] != 0
        assert client.get(CLAIM_KEY) is not None
    finally:
        client.close()


def test_the_configured_server_is_reused_when_it_answers(monkeypatch, redis_proc):
    running = f"redis://{redis_proc.host}:{redis_proc.port}/0"
    monkeypatch.setenv("REDIS_URL", running)
    assert redis_server_url(NothingToStart()) == running


def test_a_server_is_started_when_none_answers_at_redis_url(monkeypatch, request):
    nothing = f"redis://127.0.0.1:{free_port()}/0"
    monkeypatch.setenv("REDIS_URL", nothing)
    url = redis_server_url(request)
    started = request.getfixturevalue("redis_proc")
    assert url == f"redis://{started.host}:{started.port}/0"
    assert redis_answers(url)
    assert not redis_answers(nothing)


def test_claimed_redis_databases_are_distinct_and_flushed_on_release(redis_proc):
    server_url = f"redis://{redis_proc.host}:{redis_proc.port}/0"
    bystander = redis.Redis.from_url(server_url)
    bystander.set("someone-else", "kept")
    with (
        claimed_redis_database(server_url) as first,
        claimed_redis_database(server_url) as second,
    ):
        assert first != second
        owned = redis.Redis.from_url(first)
        owned.set("ours", "1")
    assert owned.dbsize() == 0
    assert bystander.get("someone-else") == b"kept"
    bystander.delete("someone-else")
    owned.close()
    bystander.close()


def test_a_session_that_can_neither_reuse_nor_start_redis_fails_saying_why(tmp_path):
    nothing = f"redis://127.0.0.1:{free_port()}/0"
    test_file = tmp_path / "test_needs_redis.py"
    test_file.write_text("def test_needs_redis(redis_url):\n    pass\n")
    # The suite's fixtures, loaded as a plugin into a session of their own.
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "--redis-exec=/nonexistent/redis-server", str(test_file)],
        cwd=tmp_path, env={**os.environ, "REDIS_URL": nothing, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True, text=True, timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "1 error" in output and "skipped" not in output, output
    assert f"No Redis server answers at {nothing} (set REDIS_URL to reuse another)" in output, output
    assert "pytest-redis could not start one" in output, output
