"""When a batcher runs its model call on the event loop instead of handing it to the model's thread.

Why: handing a call to a thread and getting its result back costs two
wake-ups, two GIL hand-overs and a write to the event loop's self-pipe; on a
busy core the thread then waits for the GIL until the event loop lets go of
it (up to the interpreter's 5 ms switch interval). For a model whose call
takes a fraction of a millisecond (a scikit-learn estimator on a small
batch) that costs more than the call itself, and buys no concurrency: such a
call holds the GIL for most of its time anyway.

The rule: a call runs inline while the median of the last inline calls'
wall times is below ``below_s``. Only inline calls are evidence: a call timed
in the thread also counts the time it spent waiting for the GIL, which says
how busy the event loop is, not how long the model takes. So while calls run
in the thread, every ``PROBE_EVERY``-th one runs inline as a probe, but only
when the thread's own timings (an upper bound) are within ``PROBE_LIMIT``
times ``below_s``: a model that takes 10 ms is never probed where the limit is 1 ms. A model that
grows slower (larger batches under load) goes back to the thread once its
inline median passes ``below_s``.
"""

from __future__ import annotations

from collections import deque

#: How many recent calls each median is taken over.
WINDOW = 16
#: How many timings a median needs before it decides anything.
MIN_SAMPLES = 4
#: While calls run in the thread, one in this many is a probe.
PROBE_EVERY = 64
#: Probe only where the thread's median is within this multiple of the limit.
PROBE_LIMIT = 5.0


def _median(values: deque[float]) -> float:
    return sorted(values)[len(values) // 2]


class InlinePolicy:
    """Decides, call by call, whether a batcher's model call runs on the event loop."""

    __slots__ = ("below_s", "_inline_s", "_thread_s", "_since_probe")

    def __init__(self, below_s: float) -> None:
        self.below_s = below_s
        self._inline_s: deque[float] = deque(maxlen=WINDOW)
        self._thread_s: deque[float] = deque(maxlen=WINDOW)
        self._since_probe = 0

    @property
    def inlining(self) -> bool:
        """Whether calls run inline now (probes aside)."""
        return len(self._inline_s) >= MIN_SAMPLES and _median(self._inline_s) < self.below_s

    def next_inline(self) -> bool:
        """Whether the next call runs inline."""
        if self.below_s <= 0:
            return False
        if self.inlining:
            return True
        if len(self._thread_s) < MIN_SAMPLES or _median(self._thread_s) > PROBE_LIMIT * self.below_s:
            return False
        # Until the inline timings can decide, every call is a probe; after that, one in PROBE_EVERY.
        if len(self._inline_s) < MIN_SAMPLES or self._since_probe >= PROBE_EVERY:
            self._since_probe = 0
            return True
        self._since_probe += 1
        return False

    def ran(self, inline: bool, wall_s: float) -> None:
        """Record how long a call took where it ran."""
        (self._inline_s if inline else self._thread_s).append(wall_s)
