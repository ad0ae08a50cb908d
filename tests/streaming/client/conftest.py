"""A daphne server for the client to talk to, API keys made with the operators' command, and restarts."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.services import (
    DAPHNE_START_TIMEOUT_S,
    REPO_ROOT,
    DaphneServer,
    ServiceUnavailable,
    daphne_command,
    manage,
    stop_process,
)

IRIS_CLASSES = {"setosa", "versicolor", "virginica"}


def create_key(server: DaphneServer, name: str, *args: str) -> str:
    return manage("create_api_key", name, *args, env=server.env).stdout.strip()


def predict_url(server: DaphneServer, model: str | None = None) -> str:
    return f"{server.ws_url}/ws/v1/predict/{model + '/' if model else ''}"


def iris_rows(n: int) -> list[list[float]]:
    """``n`` different iris rows, so that a reply matched to the wrong request shows."""
    return [[4.3 + (i % 36) / 10, 2.0 + (i % 24) / 10, 1.0 + (i % 59) / 10, 0.1 + (i % 25) / 10] for i in range(n)]


class Restartable:
    """A server that tests stop (any way they like) and start again on its port, environment and data."""

    def __init__(self, server: DaphneServer, directory: Path) -> None:
        self.server = server
        self.directory = directory
        self.started: list[DaphneServer] = []

    def restart(self) -> DaphneServer:
        """Start the stopped server again; returns once it is healthy."""
        server = self.server
        if server.process.poll() is None:
            raise AssertionError("Stop the server before starting it again on its port.")
        log = self.directory / f"daphne-{server.port}-{len(self.started) + 1}.log"
        with open(log, "wb") as output:
            process = subprocess.Popen(daphne_command(server.port), cwd=REPO_ROOT, env=server.env,
                                       stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
        self.server = DaphneServer(port=server.port, env=server.env, log=log, process=process)
        self.started.append(self.server)
        try:
            self.server.wait_until_healthy(DAPHNE_START_TIMEOUT_S)
        except ServiceUnavailable as exc:
            pytest.fail(str(exc), pytrace=False)
        return self.server


@pytest.fixture(scope="module")
def restartable(daphne_server: DaphneServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Restartable]:
    """The module's server, for tests that stop it and start it again (each leaves it running)."""
    restartable = Restartable(daphne_server, tmp_path_factory.mktemp("restarts"))
    yield restartable
    for server in restartable.started:
        stop_process(server.process)
