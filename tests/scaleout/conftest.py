"""Fixtures of the scale-out tests: the iris-only demo registry and a PostgreSQL database per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.scaleout.platform import iris_only
from tests.support import services
from tests.support.commands import DemoData


@pytest.fixture(scope="session")
def iris_demo(demo_data: DemoData, tmp_path_factory: pytest.TempPathFactory) -> DemoData:
    return iris_only(demo_data, tmp_path_factory.mktemp("iris"))


@pytest.fixture(scope="module")
def module_database(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL database of this module's own: its servers' keys and prediction log."""
    with services.throwaway_database(services.with_path(postgres_url, "/postgres")) as url:
        yield url
