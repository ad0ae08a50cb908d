"""Shadow comparisons: what each shadow version answered beside the version the clients got, kept for the audit.

The pool reports every copy of a request it runs on a shadow
(``inference.rollout.shadow``); ``platform_core.wiring`` hands
:func:`observe` to it. The recorder adds the reports up per minute and
version pair and writes them to ``ShadowComparison`` beside the prediction
log, with a bounded sample of ``ShadowDisagreement`` rows; the metrics
(``monitoring.comparisons.metrics``) count the same sums. The canary guard
(``monitoring.comparisons.guard``) watches the canaries' requests.
"""

from __future__ import annotations

import asyncio

from django.conf import settings

from inference.rollout.shadow import ShadowReport

from .. import events
from .guard import CanaryGuard, RolloutOf
from .recorder import ComparisonRecorder

_recorder: ComparisonRecorder | None = None
_guard: CanaryGuard | None = None


def get_recorder() -> ComparisonRecorder:
    """The process's recorder, made from the settings on first use."""
    global _recorder
    if _recorder is None:
        _recorder = ComparisonRecorder(
            flush_s=settings.PLATFORM_SHADOW_FLUSH_S,
            samples_per_minute=settings.PLATFORM_SHADOW_SAMPLES_PER_MINUTE,
            samples_kept=settings.PLATFORM_SHADOW_SAMPLES_KEPT,
        )
    return _recorder


def observe(report: ShadowReport) -> None:
    """The pool's shadow observer: add ``report`` to this minute's comparison."""
    get_recorder().observe(report)


def install(rollout_of: RolloutOf) -> None:
    """Watch the canaries' requests; ``rollout_of(model)`` says what this process follows for a model."""
    global _guard
    if _guard is None:
        _guard = CanaryGuard(rollout_of)
        events.on_prediction(_guard.observe)


async def shutdown() -> None:
    """Write the comparisons not written yet; a shutdown hook."""
    if _recorder is not None:
        await asyncio.to_thread(_recorder.shutdown)


__all__ = ["get_recorder", "install", "observe", "shutdown"]
