"""Delays between reconnect attempts: exponential, bounded, with jitter so that clients do not return in step."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """``initial_s * multiplier ** attempt``, at most ``max_s``, minus a random share of up to ``jitter`` of it.

    The jitter spreads the clients of a server that went away over the interval
    instead of sending them all back at the same moment; the delay is never
    above ``max_s`` and never below ``(1 - jitter)`` times the exponential one.
    """

    initial_s: float = 0.1
    max_s: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not self.initial_s > 0:
            raise ValueError(f"The first reconnect delay must be a positive number of seconds, not {self.initial_s!r}.")
        if not self.max_s >= self.initial_s:
            raise ValueError(f"The longest reconnect delay ({self.max_s!r} s) must be at least the first one "
                             f"({self.initial_s!r} s).")
        if not self.multiplier >= 1:
            raise ValueError(f"The reconnect delay's multiplier must be at least 1, not {self.multiplier!r}.")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"The reconnect delay's jitter is a share between 0 and 1, not {self.jitter!r}.")

    def ceiling_s(self, attempt: int) -> float:
        """The delay before attempt ``attempt`` (0 for the first) without jitter."""
        if attempt < 0:
            raise ValueError(f"Reconnect attempts are counted from 0, not {attempt!r}.")
        try:
            return min(self.max_s, self.initial_s * self.multiplier**attempt)
        except OverflowError:
            return self.max_s

    def delay_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """The delay before attempt ``attempt``, with jitter."""
        share = (rng or random).random()
        return self.ceiling_s(attempt) * (1.0 - self.jitter * share)
