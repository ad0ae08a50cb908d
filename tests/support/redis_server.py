"""Redis for the tests: the configured server when it answers, else one that pytest-redis starts.

``REDIS_URL`` names the server to reuse (``redis://127.0.0.1:6379/0`` when it
is unset or not a ``redis://`` URL). When nothing answers there, pytest-redis's ``redis_proc`` fixture
starts a throwaway server for the session. Either way the session works in a
logical database of its own (``claimed_redis_database``).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest

from tests.support.processes import ServiceUnavailable
from tests.support.urls import configured_url, with_path

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

CLAIM_KEY = "platform-tests:claim"
# Long enough for any test session; a crashed session's claim expires on its own.
CLAIM_TTL_S = 6 * 3600


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


def redis_server_url(request: pytest.FixtureRequest) -> str:
    """The URL of a running Redis server: the configured one if it answers, else one started for the session."""
    configured = configured_url("REDIS_URL", DEFAULT_REDIS_URL, schemes=("redis", "rediss"))
    if redis_answers(configured):
        return configured
    try:
        server = request.getfixturevalue("redis_proc")
    # pytest-redis, mirakuru and port-for each raise their own errors; all of them mean "not started".
    except Exception as exc:
        raise ServiceUnavailable(
            f"No Redis server answers at {configured} (set REDIS_URL to reuse another), and pytest-redis could "
            f"not start one: {type(exc).__name__}: {exc}\nInstall redis-server (scripts/system-deps.sh), or point "
            "--redis-exec or the redis_exec ini option at it."
        ) from exc
    return f"redis://{server.host}:{server.port}/0"


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
        if client.set(CLAIM_KEY, token, nx=True, ex=CLAIM_TTL_S) and client.dbsize() == 1:
            claimed = client
            break
        if client.get(CLAIM_KEY) == token.encode():
            client.delete(CLAIM_KEY)
        client.close()
    if claimed is None:
        raise ServiceUnavailable(
            f"Every logical database 1-{databases - 1} of the Redis server at {server_url} holds data; "
            "the tests need an empty one of their own. Set REDIS_URL to another server."
        )
    try:
        yield with_path(server_url, f"/{number}")
    finally:
        if claimed.get(CLAIM_KEY) == token.encode():
            claimed.flushdb()
        claimed.close()
