"""What the registry says of a model's rollout: its shadow and canary versions, and the canary's limits.

Framework-free, so that the registry's view, the pool and the routing share it
without importing Django's models.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rollout:
    """A model's shadow (a copy of requests, answers never sent) and canary (a share of requests answered)."""

    shadow_version: int | None = None
    #: Percentage (0-100) of the requests the active version answers that are copied to the shadow.
    shadow_sample_pct: float = 100.0
    canary_version: int | None = None
    #: Percentage (0-100) of the requests naming no version that the canary answers.
    canary_weight_pct: float = 0.0
    #: The canary is aborted when its share of server errors (percent) or its p99 latency passes these.
    canary_max_error_pct: float | None = None
    canary_max_p99_ms: float | None = None

    @property
    def active(self) -> bool:
        """Whether anything but the active version takes part in serving."""
        return self.shadow_version is not None or self.canary_version is not None

    def versions(self) -> tuple[int, ...]:
        """The versions the rollout needs loaded beside the active one."""
        return tuple(number for number in (self.shadow_version, self.canary_version) if number is not None)


#: A model with no rollout.
NO_ROLLOUT = Rollout()
