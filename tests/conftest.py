"""Fixtures shared by the whole suite: real services, real servers and the trained demo models.

A test that needs Redis, PostgreSQL or a daphne process gets a running one or
fails with the reason; it is never skipped. Such tests are marked
``realservice`` automatically, so ``pytest -m "not realservice"`` runs the rest.

Redis and PostgreSQL are reused when one answers at ``REDIS_URL`` /
``DATABASE_URL`` (else the default local ports); otherwise a throwaway server
is started for the session: Redis by pytest-redis's ``redis_proc`` fixture,
PostgreSQL by ``postgres_cluster`` below (see ``tests/support/postgres_server.py``
for why not pytest-postgresql's fixture).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support import daphne
from tests.support.commands import CommandFailed, DemoData, prepare_demo_data
from tests.support.daphne import DaphneServer
from tests.support.postgres_server import postgres_server_url, throwaway_database, throwaway_postgres
from tests.support.processes import ServiceUnavailable
from tests.support.redis_server import claimed_redis_database, redis_server_url

if TYPE_CHECKING:
    from inference.demo import TrainedModel

# Fixtures shared across folders: live statistics (monitoring, dashboard), deploying versions.
pytest_plugins = ["tests.monitoring.livestats_fixtures", "tests.support.deploying"]

REAL_SERVICE_FIXTURES = {
    "redis_url", "redis_proc", "postgres_url", "postgres_cluster",
    "demo_data", "demo_env", "start_daphne", "daphne_server",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if REAL_SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.realservice)


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of an empty Redis database owned by this session (``redis://host:port/<db>``)."""
    try:
        with claimed_redis_database(redis_server_url(request)) as url:
            yield url
    except ServiceUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[str]:
    """URL of a PostgreSQL cluster started for this session; asked for only when none answers to reuse."""
    with throwaway_postgres() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a PostgreSQL database created for this session and dropped after it."""
    try:
        with throwaway_database(postgres_server_url(request)) as url:
            yield url
    except ServiceUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> DemoData:
    """A migrated data directory with the four demo models trained once per session; read-only."""
    try:
        return prepare_demo_data(tmp_path_factory.mktemp("demo"))
    except CommandFailed as exc:
        pytest.fail(f"Could not prepare the demo models: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def demo_env(demo_data: DemoData) -> dict[str, str]:
    """The environment of a platform process on the shared demo data directory (do not write to it)."""
    return dict(demo_data.env)


StartDaphne = Callable[..., DaphneServer]


def _daphne_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, servers: list[DaphneServer]
) -> StartDaphne:
    def start(
        env: Mapping[str, str | None] | None = None,
        extra_args: Sequence[str] = (),
        *,
        demo_models: bool = True,
        timeout_s: float = daphne.DAPHNE_START_TIMEOUT_S,
    ) -> DaphneServer:
        """Start daphne on a fresh data directory (a copy of the demo models unless ``demo_models=False``)."""
        demo = request.getfixturevalue("demo_data") if demo_models else None
        try:
            server = daphne.start_daphne(
                tmp_path_factory.mktemp("daphne"), env=env, extra_args=extra_args, demo=demo, timeout_s=timeout_s
            )
        except ServiceUnavailable as exc:
            pytest.fail(str(exc), pytrace=False)
        servers.append(server)
        return server

    return start


@pytest.fixture
def start_daphne(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartDaphne]:
    """Factory: ``start_daphne(env=None, extra_args=(), *, demo_models=True)`` -> a running ``DaphneServer``.

    ``env`` overrides the server's environment (``None`` values remove a
    variable); every server started is stopped when the test ends.
    """
    servers: list[DaphneServer] = []
    yield _daphne_factory(request, tmp_path_factory, servers)
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def daphne_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaphneServer]:
    """One daphne process per test module, on the embedded defaults with a copy of the demo models."""
    servers: list[DaphneServer] = []
    yield _daphne_factory(request, tmp_path_factory, servers)()
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def trained_demo_model() -> Callable[[str], TrainedModel]:
    """``trained_demo_model(name)``: the demo model trained in this process, once per session."""
    from inference.demo import DEMO_MODELS

    # The trainers as they are now: tests may replace entries of DEMO_MODELS with this cache.
    trainers = dict(DEMO_MODELS)

    @functools.cache
    def trained(name: str) -> TrainedModel:
        return trainers[name]()

    return trained


@pytest.fixture
def model_store(settings, tmp_path: Path) -> Path:
    """An empty model store for one test."""
    store = tmp_path / "models"
    store.mkdir()
    settings.MODEL_STORE = store
    return store
