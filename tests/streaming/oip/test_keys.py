"""The key cache: one database lookup per key and check interval."""

from __future__ import annotations

import asyncio

import pytest

from streaming.auth import Client
from streaming.oip import keys
from streaming.oip.keys import KeyCache

CLIENT = Client(key_id=1, name="k", models=None, rate_limit_per_s=None)


@pytest.fixture
def lookups(monkeypatch):
    seen: list[str] = []

    async def authenticate(raw_key):
        seen.append(raw_key)
        return CLIENT if raw_key == "good" else None

    monkeypatch.setattr(keys, "authenticate", authenticate)
    return seen


async def test_a_key_is_looked_up_once_per_check_interval(lookups, settings):
    settings.PLATFORM_KEY_CHECK_INTERVAL_S = 0.1
    cache = KeyCache()
    assert [await cache.client("good") for _ in range(3)] == [CLIENT] * 3
    assert await cache.client("bad") is None and await cache.client("bad") is None
    assert lookups == ["good", "bad"]
    await asyncio.sleep(0.15)
    assert await cache.client("good") == CLIENT
    assert lookups == ["good", "bad", "good"]


async def test_made_up_keys_cannot_grow_the_cache_past_its_bound(lookups, settings):
    cache = KeyCache(max_keys=2)
    for i in range(5):
        await cache.client(f"made-up-{i}")
    assert len(cache) <= 2


def test_the_bound_is_checked():
    with pytest.raises(ValueError, match="at least 1"):
        KeyCache(max_keys=0)
