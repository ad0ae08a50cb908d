"""Fixtures and helpers of the metrics tests: served models, a real Prometheus, a prediction client.

Test modules import the fixtures they use from here by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from bench.servers import free_port, tail
from inference.served import ServedModel
from inference.service import InferenceService
from monitoring import metrics
from tests.support.daphne import DaphneServer
from tests.support.fakes import fake_entry, serve_fake_models
from tests.support.processes import ServiceUnavailable, stop_process, wait_until

PROMETHEUS_START_TIMEOUT_S = 60.0
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]

# -- served models, without loading any ---------------------------------------------------


@pytest.fixture
def served_models(monkeypatch: pytest.MonkeyPatch) -> InferenceService:
    """The process's inference service, replaced by one serving iris v1 and v2 and wine v1 (nothing loaded).

    The metrics' label caches start empty, so labels found under another
    test's models do not leak in.
    """
    features = ["a", "b", "c", "d"]
    service = serve_fake_models(
        monkeypatch,
        ServedModel("iris", "regression", features, "value", 2,
                  {1: fake_entry("iris", 1, features), 2: fake_entry("iris", 2, features)}),
        ServedModel("wine", "regression", features, "value", 1, {1: fake_entry("wine", 1, features)}),
    )
    metrics.flush()
    monkeypatch.setattr(metrics, "_request_series", {})
    monkeypatch.setattr(metrics, "_request_series_by_labels", {})
    monkeypatch.setattr(metrics, "_batch_series", {})
    return service


@pytest.fixture
def metric_sinks_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Events reach the metric sinks the app registered, and no other (the prediction log stays out)."""
    from monitoring import events

    for sinks in ("_prediction_sinks", "_connection_sinks", "_in_flight_sinks", "_batch_sinks"):
        registered = getattr(events, sinks)
        monkeypatch.setattr(events, sinks, [sink for sink in registered if _is_metric_sink(sink)])


def _is_metric_sink(sink: Callable[..., Any]) -> bool:
    owner = getattr(sink, "__self__", None)
    return getattr(sink, "__module__", None) == metrics.__name__ or owner in (
        metrics.REQUESTS_IN_FLIGHT, metrics.WEBSOCKET_CONNECTIONS)


# -- reading an exposition --------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a text exposition, keyed by name and labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


def get(url: str, headers: dict[str, str] | None = None, timeout_s: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def scrape(server: DaphneServer) -> str:
    status, _, body = get(f"{server.url}/metrics")
    assert status == 200, f"GET /metrics answered {status}: {body[:500]!r}"
    return body.decode()


# -- a prediction client ------------------------------------------------------------------


def predict_frame(request_id: int, model: str | None = "iris", inputs: Any = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "predict", "id": request_id, "inputs": inputs or [IRIS_ROW]}
    if model is not None:
        frame["model"] = model
    return frame


async def exchange(ws_url: str, frames: Sequence[dict[str, Any] | str]) -> list[dict[str, Any]]:
    """Open a prediction connection, send every frame pipelined and return one reply per frame."""
    async with websockets.connect(f"{ws_url}/ws/v1/predict/", open_timeout=10) as ws:
        ready = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert ready["type"] == "ready", ready
        for frame in frames:
            await ws.send(frame if isinstance(frame, str) else json.dumps(frame))
        return [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in frames]


async def predictions(ws_url: str, count: int, model: str = "iris") -> None:
    """Send ``count`` good requests and check that each got a prediction."""
    replies = await exchange(ws_url, [predict_frame(i, model) for i in range(count)])
    assert [reply["type"] for reply in replies] == ["prediction"] * count, replies


@contextlib.asynccontextmanager
async def idle_connection(ws_url: str) -> AsyncIterator[Any]:
    """A prediction connection that stays open, doing nothing, until the block ends."""
    async with websockets.connect(f"{ws_url}/ws/v1/predict/", open_timeout=10) as ws:
        ready = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert ready["type"] == "ready", ready
        yield ws


@pytest.fixture
def metrics_server(start_daphne: Callable[..., DaphneServer]) -> DaphneServer:
    """A daphne process on the demo models with authentication off."""
    return start_daphne(env={"PLATFORM_REQUIRE_API_KEY": "0"})


# -- a real Prometheus server ---------------------------------------------------------------


@dataclass
class Prometheus:
    """A Prometheus server on 127.0.0.1 scraping the given targets every second."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.directory / "prometheus.log"

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        status, _, body = get(f"{self.url}/api/v1/{path}?{query}")
        payload = json.loads(body)
        if status != 200 or payload.get("status") != "success":
            raise AssertionError(f"Prometheus answered {status} to {path} {params}: {payload}")
        return payload["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector: ``[{"metric": {...}, "value": [t, "v"]}, ...]``."""
        data = self.api("query", query=expr)
        if data["resultType"] != "vector":
            raise AssertionError(f"{expr} is a {data['resultType']}, not an instant vector")
        return data["result"]

    def wait_for(self, expr: str, expected: float, *, timeout_s: float = 30.0) -> None:
        """Wait until ``expr`` evaluates to exactly one series equal to ``expected``."""
        deadline = time.monotonic() + timeout_s
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if len(result) == 1 and float(result[0]["value"][1]) == expected:
                return
            time.sleep(0.25)
        raise AssertionError(f"{expr} should be {expected}; Prometheus says {result}")

    def stop(self) -> None:
        stop_process(self.process)


def prometheus_binary() -> str:
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(binary).exists():
        raise ServiceUnavailable(
            "The metrics tests start a real Prometheus server, and there is no prometheus binary "
            "on PATH or at /usr/bin/prometheus; install Debian's prometheus package (scripts/system-deps.sh)."
        )
    return binary


def prometheus_config(targets: Sequence[str]) -> str:
    return json.dumps({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "platform", "metrics_path": "/metrics", "static_configs": [{"targets": list(targets)}]},
        ],
    })


def start_prometheus(directory: Path, targets: Sequence[str]) -> Prometheus:
    """Start Prometheus with its own storage under ``directory`` and return once it is ready."""
    binary = prometheus_binary()
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "prometheus.yml"
    config.write_text(prometheus_config(targets))  # JSON is YAML
    for attempt in range(3):
        port = free_port()
        with open(directory / "prometheus.log", "wb") as log:
            process = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle"],
                cwd=directory, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        server = Prometheus(port=port, directory=directory, process=process)

        def ready(server: Prometheus = server) -> bool:
            try:
                return get(f"{server.url}/-/ready", timeout_s=2)[0] == 200
            except OSError:
                return False

        try:
            wait_until(ready, timeout_s=PROMETHEUS_START_TIMEOUT_S, what="prometheus", process=process, log=server.log)
            return server
        except ServiceUnavailable:
            server.stop()
            if attempt < 2 and "address already in use" in tail(server.log):
                continue
            raise
    raise AssertionError("unreachable")


@pytest.fixture
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[Sequence[str]], Prometheus]]:
    """Factory: ``prometheus(["127.0.0.1:8000", ...])`` -> a running ``Prometheus``, stopped after the test."""
    started: list[Prometheus] = []

    def start(targets: Sequence[str]) -> Prometheus:
        try:
            server = start_prometheus(tmp_path_factory.mktemp("prometheus"), targets)
        except ServiceUnavailable as exc:
            pytest.fail(str(exc), pytrace=False)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def promtool_binary() -> str:
    binary = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(binary).exists():
        pytest.fail("There is no promtool on PATH or at /usr/bin/promtool; install Debian's prometheus package "
                    "(scripts/system-deps.sh).", pytrace=False)
    return binary


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool_binary(), *args], check=False, input=stdin, capture_output=True, text=True,
                          timeout=60)

