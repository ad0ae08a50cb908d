"""API-key lookups for HTTP requests, cached for a short while per key.

Each HTTP request carries its key, and a database round trip per request
would cost more than a small model call. A lookup (a client, or None for a
bad key) is kept for PLATFORM_KEY_CHECK_INTERVAL_S, the interval within
which the WebSocket stream closes the connections of a revoked key, so a
revocation reaches both protocols in the same time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.conf import settings

from ..auth import Client, authenticate

#: Distinct keys remembered at once; past it the cache starts again empty (a
#: client sending made-up keys must not grow memory, and the real keys are
#: looked up again within one interval anyway).
MAX_CACHED_KEYS = 4096


@dataclass(frozen=True, slots=True)
class _Lookup:
    client: Client | None
    expires_at: float


class KeyCache:
    """``client(raw_key)``: who a key belongs to, from the database at most once per check interval."""

    def __init__(self, max_keys: int = MAX_CACHED_KEYS) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}.")
        self.max_keys = max_keys
        self._lookups: dict[str, _Lookup] = {}

    async def client(self, raw_key: str) -> Client | None:
        now = time.monotonic()
        cached = self._lookups.get(raw_key)
        if cached is not None and cached.expires_at > now:
            return cached.client
        client = await authenticate(raw_key)
        if len(self._lookups) >= self.max_keys:
            self._lookups.clear()
        self._lookups[raw_key] = _Lookup(client, time.monotonic() + settings.PLATFORM_KEY_CHECK_INTERVAL_S)
        return client

    def __len__(self) -> int:
        """How many keys' lookups are remembered."""
        return len(self._lookups)

    def clear(self) -> None:
        self._lookups.clear()


key_cache = KeyCache()
