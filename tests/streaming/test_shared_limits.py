"""Deployment-wide rate limits against a real Redis: grants, exactness across processes, the fallback and its end."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import redis
from prometheus_client import REGISTRY

from bench.servers import free_port
from streaming import shared_limits
from streaming.shared_limits import SharedBuckets, grant_size

LOCAL_REFUSAL_MS = 777.0


def local_take() -> float:
    return LOCAL_REFUSAL_MS


@pytest.fixture
def bucket_url(redis_url):
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{shared_limits.KEY_PREFIX}*"):
        client.delete(key)
    client.close()
    return redis_url


def local_processes() -> float | None:
    return REGISTRY.get_sample_value("platform_rate_limits_local_processes")


def script_calls(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return sum(stats.get(name, {}).get("calls", 0) for name in ("cmdstat_evalsha", "cmdstat_eval"))


def test_grants_hold_what_the_key_sends_in_fifty_milliseconds():
    assert grant_size(0.5) == 1
    assert grant_size(20) == 1
    assert grant_size(200) == 10
    assert grant_size(100_000) == 5000


async def test_processes_together_admit_the_burst_and_no_more(bucket_url):
    rate = 200.0
    processes = [SharedBuckets() for _ in range(4)]
    admitted = 0
    started = time.monotonic()
    for _ in range(150):
        for process in processes:
            if await process.acquire(bucket_url, 41, rate, local_take) == 0.0:
                admitted += 1
    elapsed_s = time.monotonic() - started
    # The burst (one second of the rate), plus what refilled meanwhile; never each process's own burst.
    assert rate - 4 * grant_size(rate) <= admitted <= rate + elapsed_s * rate + 1, (admitted, elapsed_s)


async def test_a_refused_request_asks_redis_nothing(bucket_url):
    process = SharedBuckets()
    while await process.acquire(bucket_url, 42, 20.0, local_take) == 0.0:
        pass
    before = script_calls(bucket_url)
    waits = [await process.acquire(bucket_url, 42, 20.0, local_take) for _ in range(50)]
    assert script_calls(bucket_url) == before
    assert all(0 < wait <= 1000 / 20.0 + 1 for wait in waits), waits


async def test_redis_down_falls_back_to_the_process_once_and_comes_back(bucket_url, caplog, monkeypatch):
    monkeypatch.setattr(shared_limits, "RETRY_S", 0.2)
    dead_url = f"redis://127.0.0.1:{free_port()}/0"
    process = SharedBuckets()
    with caplog.at_level(logging.WARNING, logger=shared_limits.__name__):
        answers = [await process.acquire(dead_url, 43, 100.0, local_take) for _ in range(20)]
        assert answers == [LOCAL_REFUSAL_MS] * 20  # the per-process bucket decided every one
        assert process.local and local_processes() == 1
        time.sleep(0.25)
        await process.acquire(dead_url, 43, 100.0, local_take)  # still down: no second message
        assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
        time.sleep(0.25)
        assert await process.acquire(bucket_url, 43, 100.0, local_take) == 0.0
    assert not process.local and local_processes() == 0
    assert len(caplog.records) == 2 and "again" in caplog.records[1].getMessage()


async def test_without_waiting_processes_admit_the_burst_and_a_grant_each_at_most(bucket_url):
    rate = 200.0
    processes = [SharedBuckets() for _ in range(4)]
    admitted = 0
    started = time.monotonic()
    for _ in range(150):
        for process in processes:
            if process.take_now(bucket_url, 44, rate, local_take) == 0.0:
                admitted += 1
        await asyncio.sleep(0.001)  # the background fetches run
    elapsed_s = time.monotonic() - started
    # Credit is paid back from later grants: beyond the bucket, at most one grant per process.
    assert rate - 4 * grant_size(rate) <= admitted <= rate + elapsed_s * rate + 4 * grant_size(rate) + 1, (
        admitted, elapsed_s)


async def test_without_waiting_redis_down_falls_back_after_one_grant_of_credit(monkeypatch):
    dead_url = f"redis://127.0.0.1:{free_port()}/0"
    process = SharedBuckets()
    first = [process.take_now(dead_url, 45, 100.0, local_take) for _ in range(grant_size(100.0))]
    assert first == [0.0] * grant_size(100.0)  # on credit while the grant is asked for
    await asyncio.sleep(0.5)  # the background fetch fails
    assert process.local
    assert process.take_now(dead_url, 45, 100.0, local_take) == LOCAL_REFUSAL_MS


def test_without_an_event_loop_the_process_decides():
    assert SharedBuckets().take_now("redis://127.0.0.1:1/0", 46, 10.0, local_take) == LOCAL_REFUSAL_MS
