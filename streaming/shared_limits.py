"""API-key rate limits for the whole deployment: one token bucket per key in Redis, leased to each process in grants.

With ``REDIS_URL`` set, a key's rate holds across every server process and
host, not per process. The bucket lives in Redis and changes only in one Lua
script (:data:`TAKE_SCRIPT`: refill from Redis's own clock, grant, store),
so the processes never race and their clocks never matter.

Asking Redis once per request would put a round trip and a Redis command on
every frame. A process instead takes a *grant* of tokens at a time (what the
key may send in :data:`GRANT_S`, at least one) and spends it locally; it asks
again when the grant is spent, and a grant it has not spent within
:data:`GRANT_TTL_S` lapses, so that tokens taken long ago never make a burst
later. Redis sees one call per grant, a refused request none: when the
bucket is empty the script says when the next token comes, and the process
answers ``rate_limited`` locally until then. What the deployment admits
stays within the bucket; what it can lose is the unspent grants, at most
``processes x GRANT_S`` of the key's rate.

Callers that cannot await (the Open Inference Protocol's admission, which
is synchronous) use :meth:`SharedBuckets.take_now`: with no token at hand it
admits the request on credit, up to one grant's worth, while a grant is
fetched in the background, and the next grant pays the credit back.

When Redis does not answer (within :data:`REDIS_TIMEOUT_S`), the process
falls back to its own per-process buckets, logs it once, and sets
``platform_rate_limits_local_processes``; it never refuses a request because
Redis is down. Every :data:`RETRY_S` one request tries Redis again, and the
first that gets an answer brings the process back to the deployment's limits.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis import RedisError
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

logger = logging.getLogger(__name__)

#: A grant holds what the key may send in this long.
GRANT_S = 0.05
#: An unspent grant lapses after this long.
GRANT_TTL_S = 1.0
#: A Redis call slower than this counts as Redis being unreachable.
REDIS_TIMEOUT_S = 0.25
#: While Redis is unreachable, one request tries it again this often.
RETRY_S = 1.0
KEY_PREFIX = "platform:ratelimit:"

# KEYS[1]: the key's bucket. ARGV: rate per second, capacity (the burst), tokens wanted.
# Returns {tokens granted, milliseconds until the next token when none was granted}.
TAKE_SCRIPT = """
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(state[1])
local updated = tonumber(state[2])
if tokens == nil or updated == nil then
  tokens = capacity
  updated = now
end
tokens = math.min(capacity, tokens + math.max(0, now - updated) * rate)
local granted = math.min(wanted, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
local wait_ms = 0
if granted == 0 then
  wait_ms = math.ceil((1 - tokens) / rate * 1000)
end
return {granted, wait_ms}
"""

#: The per-process limit, used while Redis does not answer: returns 0, or the milliseconds to wait.
LocalTake = Callable[[], float]


def grant_size(rate_per_s: float) -> int:
    """Tokens asked for at a time: the key's rate over GRANT_S, at least one, at most the burst."""
    capacity = max(1.0, rate_per_s)
    return max(1, min(math.floor(capacity), math.ceil(rate_per_s * GRANT_S)))


@dataclass
class Grant:
    """The tokens this process holds of one key's bucket."""

    rate_per_s: float
    tokens: int = 0
    expires: float = 0.0
    #: The bucket was empty: refuse locally until then (monotonic seconds).
    empty_until: float = 0.0
    #: Tokens admitted on credit (``take_now``) that the next grant pays back.
    owed: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    refilling: asyncio.Task[None] | None = None


class RedisUnavailable(Exception):
    """Redis did not answer a rate-limit call in time."""


class SharedBuckets:
    """This process's grants of the deployment's buckets, and whether Redis answers."""

    def __init__(self) -> None:
        self._grants: dict[int, Grant] = {}
        self._client: tuple[asyncio.AbstractEventLoop, str, Redis, Any] | None = None
        #: Monotonic time of the next try while Redis is unreachable; None while it answers.
        self._retry_at: float | None = None

    @property
    def local(self) -> bool:
        """True while this process enforces per-process limits because Redis does not answer."""
        return self._retry_at is not None

    async def acquire(self, redis_url: str, key_id: int, rate_per_s: float, local_take: LocalTake) -> float:
        """Take one token of ``key_id``'s bucket; 0 if allowed, else the milliseconds until one is free.

        Awaits Redis when this process holds no token of the key.
        """
        if self._retry_at is not None and time.monotonic() < self._retry_at:
            return local_take()
        grant = self._grant(key_id, rate_per_s)
        if (answer := self._spend(grant)) is not None:
            return answer
        async with grant.lock:
            # Another request of this key may have fetched a grant while this one waited for the lock.
            if (answer := self._spend(grant)) is not None:
                return answer
            try:
                await self._refill(redis_url, key_id, grant)
            except RedisUnavailable as exc:
                self._fall_back(exc)
                return local_take()
            answer = self._spend(grant)
            # None: the whole grant paid what this process owed (take_now).
            return answer if answer is not None else max(1.0, 1000.0 / rate_per_s)

    def take_now(self, redis_url: str, key_id: int, rate_per_s: float, local_take: LocalTake) -> float:
        """Take one token without waiting, for callers that cannot await; 0 if allowed, else the wait in ms.

        With no token at hand the request is admitted on credit, up to one
        grant's worth, while a grant is fetched in the background; the next
        grant pays the credit back. What the deployment admits beyond the
        bucket is at most one grant per process at a time.
        """
        if self._retry_at is not None and time.monotonic() < self._retry_at:
            return local_take()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop to fetch a grant on: this process's own bucket decides
            return local_take()
        grant = self._grant(key_id, rate_per_s)
        if (answer := self._spend(grant)) is not None:
            return answer
        if grant.refilling is None or grant.refilling.done():
            grant.refilling = loop.create_task(self._refill_in_background(redis_url, key_id, grant))
        if grant.owed < grant_size(rate_per_s):
            grant.owed += 1
            return 0.0
        return max(1.0, 1000.0 / rate_per_s)

    def _grant(self, key_id: int, rate_per_s: float) -> Grant:
        grant = self._grants.get(key_id)
        if grant is None or grant.rate_per_s != rate_per_s:
            grant = self._grants[key_id] = Grant(rate_per_s)
        return grant

    @staticmethod
    def _spend(grant: Grant) -> float | None:
        """0 when a token of the grant was spent, the wait when the bucket is empty, None to ask Redis."""
        now = time.monotonic()
        if grant.tokens > 0 and now < grant.expires:
            grant.tokens -= 1
            return 0.0
        if now < grant.empty_until:
            return (grant.empty_until - now) * 1000.0
        return None

    async def _refill(self, redis_url: str, key_id: int, grant: Grant) -> None:
        """A new grant from Redis, less what this process owes; raises RedisUnavailable."""
        wanted = grant_size(grant.rate_per_s) + grant.owed
        granted, wait_ms = await self._take(redis_url, key_id, grant.rate_per_s, wanted)
        self._recovered()
        now = time.monotonic()
        paid = min(granted, grant.owed)
        grant.owed -= paid
        grant.tokens, grant.expires = granted - paid, now + GRANT_TTL_S
        grant.empty_until = now + wait_ms / 1000.0 if granted == 0 else 0.0

    async def _refill_in_background(self, redis_url: str, key_id: int, grant: Grant) -> None:
        async with grant.lock:
            if grant.tokens > 0 and time.monotonic() < grant.expires:
                return
            try:
                await self._refill(redis_url, key_id, grant)
            except RedisUnavailable as exc:
                self._fall_back(exc)
                grant.owed = 0  # per-process limits from here; nothing to pay back

    async def _take(self, redis_url: str, key_id: int, rate_per_s: float, wanted: int) -> tuple[int, int]:
        script = self._script(redis_url)
        capacity = max(1.0, rate_per_s)
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                granted, wait_ms = await script(keys=[f"{KEY_PREFIX}{key_id}"], args=[rate_per_s, capacity, wanted])
        except (RedisError, OSError, TimeoutError) as exc:
            raise RedisUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return int(granted), int(wait_ms)

    def _script(self, redis_url: str) -> Any:
        """The registered script on a client of this event loop (redis-py's asyncio clients belong to one loop)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._client[0] is not loop or self._client[1] != redis_url:
            # No retries of its own: a Redis that does not answer at once is treated as down (the fallback).
            client = Redis.from_url(redis_url, socket_timeout=REDIS_TIMEOUT_S,
                                    socket_connect_timeout=REDIS_TIMEOUT_S, retry=Retry(NoBackoff(), 0))
            self._client = (loop, redis_url, client, client.register_script(TAKE_SCRIPT))
        return self._client[3]

    def _fall_back(self, exc: RedisUnavailable) -> None:
        if self._retry_at is None:
            from monitoring.deployment_metrics import RATE_LIMITS_LOCAL

            logger.warning("Redis does not answer (%s): API-key rate limits hold per process until it does", exc)
            RATE_LIMITS_LOCAL.set(1)
        self._retry_at = time.monotonic() + RETRY_S

    def _recovered(self) -> None:
        if self._retry_at is not None:
            from monitoring.deployment_metrics import RATE_LIMITS_LOCAL

            logger.warning("Redis answers again: API-key rate limits hold for the whole deployment again")
            RATE_LIMITS_LOCAL.set(0)
            self._retry_at = None
            self._grants.clear()
