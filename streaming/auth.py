"""API-key authentication, per-key rate limits and the handshake's Origin check."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from channels.db import database_sync_to_async
from channels.security.websocket import OriginValidator
from django.conf import settings
from django.utils import timezone

from .shared_limits import SharedBuckets


@dataclass(frozen=True, slots=True)
class Client:
    """Who is on the other end of a prediction connection."""

    key_id: int | None
    name: str | None
    #: Model names the key may use; None means every model.
    models: frozenset[str] | None
    rate_limit_per_s: float | None


ANONYMOUS = Client(key_id=None, name=None, models=None, rate_limit_per_s=None)


def bearer_token(scope: dict[str, Any]) -> str | None:
    """The key from an ``Authorization: Bearer <key>`` handshake header, if any."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


@database_sync_to_async
def authenticate(raw_key: Any) -> Client | None:
    """Return the client a key belongs to, or None for a bad or revoked key."""
    from .models import APIKey, hash_key

    if type(raw_key) is not str or not raw_key or len(raw_key) > 256:
        return None
    key = APIKey.objects.active().filter(key_hash=hash_key(raw_key)).first()
    if key is None:
        return None
    names = frozenset(key.allowed_models.values_list("name", flat=True))
    APIKey.objects.filter(pk=key.pk).update(last_used_at=timezone.now())
    return Client(key.pk, key.name, names or None, key.rate_limit_per_s)


@dataclass(slots=True)
class TokenBucket:
    """Requests per second with a one-second burst; per key and per server process."""

    rate_per_s: float
    tokens: float = field(init=False)
    updated: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = max(1.0, self.rate_per_s)
        self.updated = time.monotonic()

    def take(self) -> float:
        """Take one token; return 0 if allowed, else the milliseconds until one is free."""
        now = time.monotonic()
        capacity = max(1.0, self.rate_per_s)
        self.tokens = min(capacity, self.tokens + (now - self.updated) * self.rate_per_s)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s * 1000.0


class RateLimits:
    """Each key's rate: for the whole deployment with ``REDIS_URL`` (``shared_limits``), else per process.

    The per-process bucket is shared by all of that key's connections here,
    and decides alone while Redis does not answer.
    """

    def __init__(self) -> None:
        self._buckets: dict[int, TokenBucket] = {}
        self._shared = SharedBuckets()

    async def acquire(self, client: Client) -> float:
        """Take one request of the key's rate; 0 if allowed, else the milliseconds until one is free.

        Awaits Redis only when this process holds no token of the key.
        """
        if client.rate_limit_per_s is None or client.key_id is None:
            return 0.0
        if not settings.REDIS_URL:
            return self._take_local(client)
        return await self._shared.acquire(settings.REDIS_URL, client.key_id, client.rate_limit_per_s,
                                          partial(self._take_local, client))

    def take(self, client: Client) -> float:
        """``acquire`` without waiting: a request with no token at hand is admitted on credit (``take_now``)."""
        if client.rate_limit_per_s is None or client.key_id is None:
            return 0.0
        if not settings.REDIS_URL:
            return self._take_local(client)
        return self._shared.take_now(settings.REDIS_URL, client.key_id, client.rate_limit_per_s,
                                     partial(self._take_local, client))

    def _take_local(self, client: Client) -> float:
        """This process's bucket of the key."""
        if client.rate_limit_per_s is None or client.key_id is None:
            return 0.0
        bucket = self._buckets.get(client.key_id)
        if bucket is None or bucket.rate_per_s != client.rate_limit_per_s:
            bucket = self._buckets[client.key_id] = TokenBucket(client.rate_limit_per_s)
        return bucket.take()


rate_limits = RateLimits()


def allowed_origins() -> list[str]:
    """Origins from PLATFORM_ALLOWED_ORIGINS, else the allowed hosts (and localhost in debug)."""
    origins = list(settings.PLATFORM_ALLOWED_ORIGINS)
    if not origins:
        origins = list(settings.ALLOWED_HOSTS)
        if settings.DEBUG:
            origins += [".localhost", "127.0.0.1", "[::1]"]
    return origins


class PlatformOriginValidator(OriginValidator):
    """Refuses (HTTP 403) a handshake whose Origin is not allowed, before any consumer code runs.

    ``allow_missing`` admits handshakes without an Origin header: non-browser
    clients on the predict endpoints, which their API key authenticates.
    """

    def __init__(self, application: Any, *, allow_missing: bool) -> None:
        super().__init__(application, [])
        self.allow_missing = allow_missing

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        # Read lazily so settings overridden in tests and deployments apply.
        self.allowed_origins = allowed_origins()
        return await super().__call__(scope, receive, send)

    def valid_origin(self, parsed_origin: Any) -> bool:
        if parsed_origin is None:
            return self.allow_missing
        return super().valid_origin(parsed_origin)

