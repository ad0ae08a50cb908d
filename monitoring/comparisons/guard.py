"""The canary guard: aborts a canary whose server errors or p99 latency pass the limits set on its model.

It watches the requests each canary answers in this process (the prediction
events), over a window of the latest ``window`` of them, judged once it holds
``min_requests`` and then every ``every`` requests. Server errors are the
outcomes that are the version's doing: ``internal``, ``timeout``,
``model_unavailable`` and ``overloaded``; the latency is the request's total
time in the server. Past a limit it aborts the rollout once, in a thread
(``inference.rollout.changes.abort``, source ``guard``), only if that
version is still the canary: several processes may decide at once, and the
first one's abort stands.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable

from inference.exceptions import DeploymentConflict, InferenceError
from inference.outcomes import Outcome
from inference.rollout.plan import Rollout

from ..events import PredictionEvent

logger = logging.getLogger(__name__)

SERVER_ERRORS = frozenset({Outcome.INTERNAL, Outcome.TIMEOUT, Outcome.MODEL_UNAVAILABLE, Outcome.OVERLOADED})
#: Called with a model's name: the rollout this process follows for it, or None.
RolloutOf = Callable[[str], Rollout | None]
#: Called in a thread to abort: ``abort(model, canary_version, reason)``.
Abort = Callable[[str, int, str], None]


def abort_canary(model: str, version: int, reason: str) -> None:
    """Abort ``model``'s rollout if ``version`` is still its canary (the guard's default ``abort``)."""
    from django.db import close_old_connections

    from inference.rollout import changes

    try:
        changes.abort(model, actor="canary guard", source="guard", reason=reason, canary=version)
    except DeploymentConflict:
        logger.info("The canary v%d of %s was aborted or replaced already", version, model)
    except InferenceError:
        logger.exception("Could not abort the canary v%d of %s", version, model)
    finally:
        close_old_connections()


class CanaryGuard:
    """Judges each canary of this process on its latest requests (``observe`` is a prediction sink)."""

    def __init__(self, rollout_of: RolloutOf, abort: Abort = abort_canary, *, window: int = 200,
                 min_requests: int = 50, every: int = 10) -> None:
        if not 0 < min_requests <= window:
            raise ValueError(f"min_requests must be between 1 and window ({window}), not {min_requests!r}.")
        self._rollout_of = rollout_of
        self._abort = abort
        self.window, self.min_requests, self.every = window, min_requests, max(1, every)
        #: Per (model, canary version): the rollout judged, its latest requests (server error?, ms), and a count.
        self._watched: dict[tuple[str, int], tuple[Rollout, deque[tuple[bool, float]], list[int]]] = {}
        self._tripped: dict[tuple[str, int], Rollout] = {}

    def observe(self, event: PredictionEvent) -> None:
        model, version = event.model, event.version
        if model is None or version is None:
            return
        rollout = self._rollout_of(model)
        if rollout is None or rollout.canary_version != version or (
                rollout.canary_max_error_pct is None and rollout.canary_max_p99_ms is None):
            return
        key = (model, version)
        if self._tripped.get(key) is rollout:
            return
        watched = self._watched.get(key)
        if watched is None or watched[0] is not rollout:  # a new canary, or new limits: a new window
            watched = self._watched[key] = (rollout, deque(maxlen=self.window), [0])
        _, requests, seen = watched
        requests.append((event.outcome in SERVER_ERRORS, event.total_ms or 0.0))
        seen[0] += 1
        if len(requests) < self.min_requests or seen[0] % self.every:
            return
        reason = self.verdict(rollout, requests)
        if reason is not None:
            self._tripped[key] = rollout
            del self._watched[key]
            logger.warning("Aborting the canary v%d of %s: %s", version, model, reason)
            threading.Thread(target=self._abort, args=(model, version, reason), name="canary-abort",
                             daemon=True).start()

    @staticmethod
    def verdict(rollout: Rollout, requests: deque[tuple[bool, float]]) -> str | None:
        """Why the canary must go, or None while it is within its limits."""
        n = len(requests)
        error_pct = 100.0 * sum(error for error, _ in requests) / n
        if rollout.canary_max_error_pct is not None and error_pct > rollout.canary_max_error_pct:
            return (f"{error_pct:.1f}% of its last {n} requests ended in a server error, past the limit of "
                    f"{rollout.canary_max_error_pct:g}%")
        if rollout.canary_max_p99_ms is not None:
            latencies = sorted(ms for _, ms in requests)
            p99 = latencies[max(0, math.ceil(0.99 * n) - 1)]
            if p99 > rollout.canary_max_p99_ms:
                return (f"its p99 latency over its last {n} requests is {p99:.1f} ms, past the limit of "
                        f"{rollout.canary_max_p99_ms:g} ms")
        return None
