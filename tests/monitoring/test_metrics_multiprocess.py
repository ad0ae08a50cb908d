"""Several daphne processes sharing one PROMETHEUS_MULTIPROC_DIR: any one's /metrics reports them all."""

from __future__ import annotations

import asyncio

from tests.monitoring.metrics_support import idle_connection, predictions, promtool, scrape, value

IRIS_1_OK = {"model": "iris", "version": "1", "outcome": "ok", "protocol": "websocket"}


async def scrape_when_flushed(server, requests: int) -> str:
    """A scrape once the other process has flushed its counts (each does at least once a second).

    A scrape may land in the middle of another process's flush, between its
    counter and its histogram: wait until both are complete.
    """
    deadline = asyncio.get_running_loop().time() + 5.0
    while True:
        exposition = await asyncio.to_thread(scrape, server)
        seen = (value(exposition, "platform_requests_total", **IRIS_1_OK),
                value(exposition, "platform_request_duration_seconds_count", **IRIS_1_OK))
        if seen == (requests, requests) or asyncio.get_running_loop().time() > deadline:
            return exposition
        await asyncio.sleep(0.1)


async def test_each_process_reports_the_sum_of_all_processes(start_daphne, tmp_path):
    shared = tmp_path / "prometheus-multiproc"
    env = {"PLATFORM_REQUIRE_API_KEY": "0", "PROMETHEUS_MULTIPROC_DIR": str(shared)}
    first, second = start_daphne(env=env), start_daphne(env=env)

    await predictions(first.ws_url, 5)
    await predictions(second.ws_url, 7)
    async with idle_connection(first.ws_url), idle_connection(second.ws_url):
        for server in (first, second):
            exposition = await scrape_when_flushed(server, 12)
            assert value(exposition, "platform_requests_total", **IRIS_1_OK) == 12
            assert value(exposition, "platform_rows_total", model="iris", version="1") == 12
            assert value(exposition, "platform_request_duration_seconds_count", **IRIS_1_OK) == 12
            assert value(exposition, "platform_websocket_connections") == 2
            assert value(exposition, "platform_requests_in_flight") == 0

        # django-prometheus's metrics are added up too: three requests to the
        # second process, and the scrape itself, counted by the first.
        before = value(exposition, "django_http_requests_before_middlewares_total")
        for _ in range(3):
            assert await asyncio.to_thread(second.healthz_status) == 200
        exposition = await asyncio.to_thread(scrape, first)
        assert value(exposition, "django_http_requests_before_middlewares_total") == before + 4

        result = promtool("check", "metrics", stdin=exposition)
        assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
            f"promtool check metrics (status {result.returncode}):\n{result.stdout}{result.stderr}"
        )

        # A process that shuts down takes its live gauges with it; what it counted stays counted.
        second_pid = second.process.pid
        assert list(shared.glob(f"gauge_livesum_{second_pid}.db"))
        await asyncio.to_thread(second.stop)
        assert not list(shared.glob(f"gauge_livesum_{second_pid}.db")), (
            f"The stopped process left its live gauges behind. The end of its log:\n{second.log_tail()}"
        )
        exposition = await asyncio.to_thread(scrape, first)
        assert value(exposition, "platform_requests_total", **IRIS_1_OK) == 12
        assert value(exposition, "platform_websocket_connections") == 1
