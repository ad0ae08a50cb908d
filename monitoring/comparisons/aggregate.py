"""Shadow reports added up per minute and version pair, in memory, until the recorder writes them.

Framework-free; the recorder (``monitoring.comparisons.recorder``) calls
:meth:`Aggregator.add` on the event loop for each report and
:meth:`Aggregator.take` from its writer thread, under its lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from inference.rollout.compare import Disagreement
from inference.rollout.shadow import ShadowReport, ShadowStatus


@dataclass(frozen=True, slots=True)
class PairMinute:
    """One model's version pair in one minute (Unix seconds of its start)."""

    minute: int
    model: str
    primary_version: int
    shadow_version: int


@dataclass(slots=True)
class Bucket:
    """What one process saw of one version pair in one minute."""

    requests: int = 0
    rows: int = 0
    agreed_rows: int = 0
    sum_abs_diff: float = 0.0
    max_abs_diff: float = 0.0
    primary_ms_sum: float = 0.0
    primary_ms_max: float = 0.0
    shadow_ms_sum: float = 0.0
    shadow_ms_max: float = 0.0
    failed: int = 0
    dropped: int = 0
    #: Why copies were dropped, counted (the metrics' ``reason`` label).
    drop_reasons: dict[str, int] = field(default_factory=dict)
    #: Disagreeing rows, with the time of the answer; at most the aggregator's ``samples_per_minute``.
    samples: list[tuple[float, Disagreement]] = field(default_factory=list)


class Aggregator:
    """Adds shadow reports up per minute and version pair."""

    def __init__(self, *, samples_per_minute: int) -> None:
        if samples_per_minute < 0:
            raise ValueError(f"samples_per_minute must be at least 0, not {samples_per_minute!r}.")
        self.samples_per_minute = samples_per_minute
        self._buckets: dict[PairMinute, Bucket] = {}
        #: Disagreements kept per pair and minute, across takes (a minute spans several).
        self._sampled: dict[PairMinute, int] = {}

    def add(self, report: ShadowReport) -> None:
        key = PairMinute(int(report.at // 60 * 60), report.model, report.primary_version, report.shadow_version)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Bucket()
        if report.status == ShadowStatus.DROPPED:
            bucket.dropped += 1
            bucket.drop_reasons[report.reason] = bucket.drop_reasons.get(report.reason, 0) + 1
            return
        if report.status == ShadowStatus.FAILED or report.comparison is None:
            bucket.failed += report.requests
            return
        comparison = report.comparison
        primary_ms, shadow_ms = report.primary_ms or 0.0, report.shadow_ms or 0.0
        bucket.requests += report.requests
        bucket.rows += comparison.rows
        bucket.agreed_rows += comparison.agreed
        bucket.sum_abs_diff += comparison.sum_abs_diff
        bucket.max_abs_diff = max(bucket.max_abs_diff, comparison.max_abs_diff)
        bucket.primary_ms_sum += primary_ms
        bucket.primary_ms_max = max(bucket.primary_ms_max, report.primary_ms_max or primary_ms)
        bucket.shadow_ms_sum += shadow_ms
        bucket.shadow_ms_max = max(bucket.shadow_ms_max, report.shadow_ms_max or shadow_ms)
        if comparison.disagreements:
            sampled = self._sampled.get(key, 0)
            kept = comparison.disagreements[:max(0, self.samples_per_minute - sampled)]
            self._sampled[key] = sampled + len(kept)
            bucket.samples.extend((report.at, disagreement) for disagreement in kept)

    def take(self) -> dict[PairMinute, Bucket]:
        """Everything added since the last call; the aggregator starts empty again."""
        taken, self._buckets = self._buckets, {}
        if taken:
            latest = max(key.minute for key in taken)
            self._sampled = {key: n for key, n in self._sampled.items() if key.minute >= latest - 60}
        return taken

    def __len__(self) -> int:
        return len(self._buckets)
