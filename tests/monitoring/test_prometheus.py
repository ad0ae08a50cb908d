"""The exposition of a running daphne process, linted by promtool and scraped by a real Prometheus.

One server and one Prometheus serve the whole module: the traffic below is
sent once, then each test checks what a different reader of it sees.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.sync.client import connect

from tests.monitoring.metrics_support import (
    IRIS_ROW,
    Prometheus,
    exchange,
    predict_frame,
    predictions,
    promtool,
    scrape,
    start_prometheus,
    value,
)
from tests.support import services
from tests.support.services import DaphneServer, DemoData, ServiceUnavailable

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO_ROOT / "monitoring" / "prometheus"
DASHBOARD = REPO_ROOT / "monitoring" / "grafana" / "dashboards" / "platform.json"

SERVED = 20


async def some_traffic(ws_url: str) -> None:
    """SERVED one-row predictions, one three-row prediction and three errors of two kinds."""
    await predictions(ws_url, SERVED)
    replies = await exchange(ws_url, [
        predict_frame(100, inputs=[IRIS_ROW] * 3),
        predict_frame(101, inputs=[IRIS_ROW[:3]]),
        predict_frame(102, inputs=[IRIS_ROW[:2]]),
        predict_frame(103, model="no-such-model"),
    ])
    replies.sort(key=lambda reply: reply["id"])
    assert [reply.get("error", {}).get("code") for reply in replies] == [
        None, "invalid_input", "invalid_input", "unknown_model"], replies


@dataclass
class Scraped:
    server: DaphneServer
    prometheus: Prometheus


@pytest.fixture(scope="module")
def scraped(demo_data: DemoData, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    """A daphne process that served ``some_traffic`` and still holds one idle connection, and a
    Prometheus scraping it every second."""
    try:
        server = services.start_daphne(tmp_path_factory.mktemp("daphne"), env={"PLATFORM_REQUIRE_API_KEY": "0"},
                                       demo=demo_data)
    except ServiceUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        try:
            prometheus = start_prometheus(tmp_path_factory.mktemp("prometheus"), [f"127.0.0.1:{server.port}"])
        except ServiceUnavailable as exc:
            pytest.fail(str(exc), pytrace=False)
        try:
            with connect(f"{server.ws_url}/ws/v1/predict/", open_timeout=10) as idle:
                assert json.loads(idle.recv(timeout=10))["type"] == "ready"
                asyncio.run(some_traffic(server.ws_url))
                yield Scraped(server, prometheus)
        finally:
            prometheus.stop()
    finally:
        server.stop()


def test_promtool_finds_no_problem_in_the_exposition(scraped):
    exposition = scrape(scraped.server)
    assert value(exposition, "platform_requests_total", model="iris", version="1", outcome="ok",
                 protocol="websocket") == SERVED + 1

    result = promtool("check", "metrics", stdin=exposition)

    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        f"promtool check metrics (status {result.returncode}):\n{result.stdout}{result.stderr}"
    )


def test_prometheus_scrapes_the_platform_series_with_the_right_counts(scraped):
    prometheus = scraped.prometheus
    prometheus.wait_for('up{job="platform"}', 1)
    prometheus.wait_for('platform_requests_total{model="iris",version="1",outcome="ok"}', SERVED + 1)
    prometheus.wait_for('sum(platform_requests_total{outcome="invalid_input"})', 2)
    prometheus.wait_for('platform_errors_total{model="",version="",outcome="unknown_model"}', 1)
    prometheus.wait_for("sum(platform_errors_total)", 3)
    prometheus.wait_for('platform_rows_total{model="iris",version="1"}', SERVED + 3)
    prometheus.wait_for('platform_batch_size_rows_sum{model="iris",version="1"}', SERVED + 3)
    prometheus.wait_for('platform_request_duration_seconds_count{model="iris",version="1",outcome="ok"}', SERVED + 1)
    prometheus.wait_for('platform_queue_wait_seconds_count{model="iris",version="1"}', SERVED + 1)
    prometheus.wait_for('platform_queue_depth_requests{model="iris",version="1"}', 0)
    prometheus.wait_for("platform_requests_in_flight", 0)
    # The idle connection is still open; the traffic's own are closed.
    prometheus.wait_for("platform_websocket_connections", 1)
    # No series is labelled with what a client made up.
    assert not prometheus.query('{__name__=~"platform_.*",model="no-such-model"}')
    # django-prometheus's HTTP metrics come through the same endpoint.
    prometheus.wait_for('count(django_http_requests_latency_seconds_by_view_method_count{view="metrics"} > 0)', 1)


def dashboard_panels() -> list[tuple[str, list[str]]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], [target["expr"] for target in panel["targets"]])
            for panel in dashboard["panels"] if panel.get("targets")]


def dashboard_queries() -> list[str]:
    return [expr for _, exprs in dashboard_panels() for expr in exprs]


def test_every_dashboard_panel_finds_the_platform_series(scraped):
    # What Grafana substitutes before it sends a query: every model, a rate window.
    def as_grafana_sends(expr: str) -> str:
        return expr.replace("$__rate_interval", "15s").replace('"$model"', '".*"')

    prometheus = scraped.prometheus
    prometheus.wait_for('count(count_over_time(up{job="platform"}[15s]) >= 4)', 1, timeout_s=30)
    empty = []
    for title, exprs in dashboard_panels():
        # Each query must be valid PromQL (query() fails otherwise); a line may
        # have no data yet (no database error happened), but a panel must.
        if not any([prometheus.query(as_grafana_sends(expr)) for expr in exprs]):
            empty.append(title)
    assert not empty, f"These dashboard panels show no data: {empty}"


def test_the_dashboard_uses_only_metrics_the_platform_exposes(scraped):
    exposed = {line.split()[2] for line in scrape(scraped.server).splitlines() if line.startswith("# TYPE ")}
    suffixes = re.compile(r"_(bucket|sum|count)$")
    used = {name for expr in dashboard_queries()
            for name in re.findall(r"\b((?:platform|django)_[a-z_]+)\b", expr)}
    unknown = {name for name in used if name not in exposed and suffixes.sub("", name) not in exposed}
    assert not unknown, f"The dashboard queries metrics that /metrics does not expose: {sorted(unknown)}"


def test_the_prometheus_config_and_its_alert_rules_pass_promtool():
    config = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    rules = promtool("test", "rules", str(PROMETHEUS_DIR / "alerts_test.yml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr
