"""Which version answers a request: the active one, or the model's canary for its share of requests.

The choice is a pure function of the request, so that the same request sent
again is answered by the same version, in every server process: a 64-bit
BLAKE2b hash of the request's id (its ``repr``: ``"a1"`` and ``1`` differ)
and of its input rows as the model receives them (float64, row-major). The
hash's low 32 bits decide the canary, its high 32 bits the shadow sample, so
the two choices are independent. A request with no id is keyed by its
inputs alone.

A request that names a version is never redirected, and neither canary nor
shadow traffic is hashed for a model without a rollout.
"""

from __future__ import annotations

import hashlib
from enum import IntEnum
from typing import Any

import numpy as np

from ..served import ServedModel, ServedVersion

_SHARE_BITS = 32
_SHARE_MASK = (1 << _SHARE_BITS) - 1


class Draw(IntEnum):
    """Which part of a request's key decides what."""

    CANARY = 0
    SHADOW = 1


def request_key(request_id: Any, rows: np.ndarray) -> int:
    """The request's 64-bit routing key: a hash of its id and its input rows."""
    digest = hashlib.blake2b(repr(request_id).encode("utf-8", "backslashreplace"), digest_size=8)
    digest.update(np.ascontiguousarray(rows, dtype=np.float64).tobytes())
    return int.from_bytes(digest.digest(), "big")


def in_share(key: int, draw: Draw, percent: float) -> bool:
    """Whether a request of this key falls in the first ``percent`` of ``draw``'s range."""
    if percent <= 0:
        return False
    if percent >= 100:
        return True
    point = (key >> (_SHARE_BITS * draw)) & _SHARE_MASK
    return point < percent / 100.0 * (1 << _SHARE_BITS)


def route(info: ServedModel | None, entry: ServedVersion, rows: np.ndarray, *, pinned: bool,
          request_id: Any) -> tuple[ServedVersion, int | None]:
    """The version that answers a request ``entry`` was resolved to, and the request's key.

    The key is None where the request may not be copied to a shadow: it was
    pinned, the model has no rollout, or the canary answers it.
    """
    if pinned or info is None or not info.rollout.active or entry.version != info.active_version:
        return entry, None
    key = request_key(request_id, rows)
    rollout = info.rollout
    canary = rollout.canary_version
    if canary is not None and canary != entry.version and in_share(key, Draw.CANARY, rollout.canary_weight_pct):
        candidate = info.versions.get(canary)
        # Not loaded here (yet, or it failed): the active version answers.
        if candidate is not None and candidate.ready:
            return candidate, None
    return entry, key
