"""Settings read from the environment: database and channel layer switching, production refusals."""

import asyncio
import contextlib
import runpy
import secrets
import socket
import subprocess
import sys
import textwrap
import time
import uuid

import psycopg
import pytest
from channels_redis.core import RedisChannelLayer
from django.core.exceptions import ImproperlyConfigured

from bench.servers import free_port
from tests.support.services import REPO_ROOT, manage, platform_env

STRONG_KEY = secrets.token_urlsafe(50)
SETTINGS_FILE = REPO_ROOT / "platform_core" / "settings.py"
ENVIRONMENT = ("DJANGO_DEBUG", "DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS", "DATABASE_URL", "REDIS_URL")


@pytest.fixture
def read_settings(monkeypatch, tmp_path):
    """Execute platform_core/settings.py afresh with the given environment; returns its namespace."""

    def read(**env):
        for name in ENVIRONMENT:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("PLATFORM_DATA_DIR", str(tmp_path / "data"))
        monkeypatch.delenv("PLATFORM_MODEL_STORE", raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return runpy.run_path(str(SETTINGS_FILE))

    return read


def production_env(tmp_path, **overrides):
    """A production-mode environment for a subprocess (DJANGO_DEBUG unset)."""
    env = platform_env(
        tmp_path / "data",
        {"DJANGO_DEBUG": None, "DJANGO_SECRET_KEY": STRONG_KEY, "DJANGO_ALLOWED_HOSTS": "predict.example.com"},
    )
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


# -- database --------------------------------------------------------------------------


def test_without_database_url_sqlite_lives_in_the_data_dir(read_settings, tmp_path):
    database = read_settings(DJANGO_DEBUG="1")["DATABASES"]["default"]
    assert database["ENGINE"] == "django_prometheus.db.backends.sqlite3"
    assert database["NAME"] == str(tmp_path / "data" / "platform.sqlite3")
    assert "journal_mode=WAL" in database["OPTIONS"]["init_command"]


def test_a_postgres_database_url_switches_to_postgresql(read_settings):
    namespace = read_settings(DJANGO_DEBUG="1", DATABASE_URL="postgresql://app:s3cret@db.internal:5433/platform")
    database = namespace["DATABASES"]["default"]
    assert database["ENGINE"] == "django_prometheus.db.backends.postgresql"
    assert (database["HOST"], database["PORT"], database["NAME"]) == ("db.internal", 5433, "platform")
    assert (database["USER"], database["PASSWORD"]) == ("app", "s3cret")
    assert "init_command" not in database.get("OPTIONS", {})


def test_a_sqlite_database_url_keeps_the_sqlite_options(read_settings, tmp_path):
    database = read_settings(DJANGO_DEBUG="1", DATABASE_URL=f"sqlite:///{tmp_path}/other.sqlite3")["DATABASES"]["default"]
    assert database["ENGINE"] == "django_prometheus.db.backends.sqlite3"
    assert database["NAME"] == f"{tmp_path}/other.sqlite3"
    assert database["OPTIONS"]["timeout"] == 20


def test_migrate_runs_against_the_real_postgresql(postgres_url, tmp_path):
    env = platform_env(tmp_path / "data", {"DATABASE_URL": postgres_url})
    manage("migrate", "--no-input", env=env)
    vendor = manage(
        "shell", "--no-imports", "-c", "from django.db import connection; print(connection.vendor)", env=env
    )
    assert vendor.stdout.strip() == "postgresql"
    with psycopg.connect(postgres_url) as connection:
        tables = {row[0] for row in connection.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"inference_mlmodel", "inference_modelversion", "django_migrations"} <= tables
    assert not (tmp_path / "data" / "platform.sqlite3").exists()


# -- channel layer -----------------------------------------------------------------------


def test_without_redis_url_the_channel_layer_is_in_memory(read_settings):
    layers = read_settings(DJANGO_DEBUG="1")["CHANNEL_LAYERS"]
    assert layers == {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


def test_redis_url_switches_to_channels_redis(read_settings):
    layer = read_settings(DJANGO_DEBUG="1", REDIS_URL="redis://cache.internal:6380/2")["CHANNEL_LAYERS"]["default"]
    assert layer["BACKEND"] == "channels_redis.core.RedisChannelLayer"
    assert [host["address"] for host in layer["CONFIG"]["hosts"]] == ["redis://cache.internal:6380/2"]


async def test_the_channel_layer_carries_on_after_redis_restarts(read_settings, tmp_path):
    """The first group_add after a restart must not fail on a stale pooled connection."""
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(tmp_path)]

    def start() -> subprocess.Popen:
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return server
            time.sleep(0.05)
        server.kill()
        raise AssertionError(f"redis-server did not start on port {port}")

    config = read_settings(DJANGO_DEBUG="1", REDIS_URL=f"redis://127.0.0.1:{port}/0")["CHANNEL_LAYERS"]["default"]
    server = start()
    try:
        layer = RedisChannelLayer(**config["CONFIG"])
        await layer.group_add("dashboard", "before")
        server.terminate()
        server.wait(10)
        server = start()
        await layer.group_add("dashboard", "after")  # a stale connection of the pool is retried, not raised
        channel = await layer.new_channel()
        await layer.group_add("dashboard", channel)
        await layer.group_send("dashboard", {"type": "dashboard.snapshot", "n": 1})
        assert await asyncio.wait_for(layer.receive(channel), timeout=5) == {"type": "dashboard.snapshot", "n": 1}
        await layer.flush()
    finally:
        server.terminate()
        server.wait(10)


SEND_FROM_ANOTHER_PROCESS = textwrap.dedent(
    """
    import sys
    import django
    django.setup()
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer
    layer = get_channel_layer()
    async_to_sync(layer.send)(sys.argv[1], {"type": "test.message", "token": sys.argv[2]})
    print(type(layer).__name__)
    """
)


async def test_a_message_crosses_processes_through_the_real_redis(read_settings, redis_url, tmp_path):
    config = read_settings(DJANGO_DEBUG="1", REDIS_URL=redis_url)["CHANNEL_LAYERS"]["default"]["CONFIG"]
    layer = RedisChannelLayer(**config)
    try:
        channel = await layer.new_channel()
        token = uuid.uuid4().hex
        sender = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", SEND_FROM_ANOTHER_PROCESS, channel, token],
            cwd=REPO_ROOT, env=platform_env(tmp_path / "data", {"REDIS_URL": redis_url}),
            capture_output=True, text=True, timeout=120,
        )
        assert sender.returncode == 0, sender.stderr
        assert sender.stdout.strip() == "RedisChannelLayer"
        message = await asyncio.wait_for(layer.receive(channel), timeout=10)
        assert message == {"type": "test.message", "token": token}
    finally:
        await layer.flush()
        await layer.close_pools()


# -- production mode ---------------------------------------------------------------------


def test_debug_is_off_unless_asked_for(read_settings):
    namespace = read_settings(DJANGO_SECRET_KEY=STRONG_KEY, DJANGO_ALLOWED_HOSTS="predict.example.com")
    assert namespace["DEBUG"] is False
    assert namespace["ALLOWED_HOSTS"] == ["predict.example.com"]
    assert namespace["SECURE_SSL_REDIRECT"] is True
    assert namespace["SESSION_COOKIE_SECURE"] and namespace["CSRF_COOKIE_SECURE"]


def test_an_unreadable_debug_flag_is_refused(read_settings):
    with pytest.raises(ImproperlyConfigured, match="DJANGO_DEBUG must be one of"):
        read_settings(DJANGO_DEBUG="maybe")


def test_production_refuses_to_start_without_a_secret_key(read_settings):
    with pytest.raises(ImproperlyConfigured, match="DJANGO_SECRET_KEY must be set"):
        read_settings(DJANGO_ALLOWED_HOSTS="predict.example.com")


@pytest.mark.parametrize(
    "weak_key",
    [
        "django-insecure-" + secrets.token_urlsafe(50),
        secrets.token_urlsafe(20),
        "ab" * 40,
    ],
    ids=["django-insecure-prefix", "too-short", "too-few-distinct-characters"],
)
def test_production_refuses_a_weak_secret_key(read_settings, weak_key):
    with pytest.raises(ImproperlyConfigured, match="too weak"):
        read_settings(DJANGO_SECRET_KEY=weak_key, DJANGO_ALLOWED_HOSTS="predict.example.com")


def test_production_refuses_to_start_without_allowed_hosts(read_settings):
    with pytest.raises(ImproperlyConfigured, match="DJANGO_ALLOWED_HOSTS must list"):
        read_settings(DJANGO_SECRET_KEY=STRONG_KEY)


def test_debug_mode_accepts_no_secret_key(read_settings):
    namespace = read_settings(DJANGO_DEBUG="1")
    assert namespace["DEBUG"] is True
    assert namespace["SECRET_KEY"]
    assert "localhost" in namespace["ALLOWED_HOSTS"]


def test_a_production_process_without_a_secret_key_exits_with_the_reason(tmp_path):
    result = manage("check", env=production_env(tmp_path, DJANGO_SECRET_KEY=None), check=False)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in result.stderr


def test_the_deploy_check_passes_in_production_mode(tmp_path):
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env(tmp_path), check=False)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "no issues" in result.stdout


def test_short_model_calls_run_inline_below_one_millisecond_unless_told_otherwise(read_settings):
    def limit(**env: str) -> float:
        return read_settings(DJANGO_DEBUG="1", **env)["PLATFORM_INLINE_CALLS_BELOW_MS"]

    assert limit() == 1.0
    assert limit(PLATFORM_INLINE_CALLS_BELOW_MS="0") == 0.0
    assert limit(PLATFORM_INLINE_CALLS_BELOW_MS="0.25") == 0.25


@pytest.mark.parametrize("bad", ["-1", "nan", "inf", "fast"])
def test_an_impossible_inline_limit_is_refused_at_startup(read_settings, bad):
    with pytest.raises(ImproperlyConfigured, match="PLATFORM_INLINE_CALLS_BELOW_MS must be a"):
        read_settings(DJANGO_DEBUG="1", PLATFORM_INLINE_CALLS_BELOW_MS=bad)
