"""What the registry says each model should serve, read in one query.

The pool compares this view with the last one it acted on: equal views mean
nothing changed, so a reconcile that finds nothing new costs this one query
(one row per model version, a handful of columns).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.conf import settings

from .rollout.plan import NO_ROLLOUT, Rollout

if TYPE_CHECKING:
    from .models import ModelVersion

#: Registry statuses (``ModelVersion.Status``), spelled out so that this module imports no model at import time.
ACTIVE, STAGED, RETIRED, FAILED = "active", "staged", "retired", "failed"


@dataclass(frozen=True, slots=True)
class Batching:
    """A model's batcher options: its own where the registry sets them, else the platform's defaults."""

    max_batch_size: int
    max_delay_ms: float
    queue_capacity: int
    #: Model calls measured shorter than this run on the event loop (``DynamicBatcher``); 0: always in a thread.
    inline_below_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class RegisteredVersion:
    """One version as the registry records it."""

    version: int
    status: str
    is_active: bool
    checksum: str

    @property
    def servable(self) -> bool:
        """Whether the version may serve at all: active or staged (not retired, not failed)."""
        return self.status in (ACTIVE, STAGED)


@dataclass(frozen=True, slots=True)
class RegisteredModel:
    """One model and its versions as the registry records them."""

    name: str
    task: str
    inputs: tuple[str, ...]
    outputs: str
    batching: Batching
    versions: Mapping[int, RegisteredVersion] = field(default_factory=dict)
    rollout: Rollout = NO_ROLLOUT

    @property
    def active_version(self) -> int | None:
        """The version that serves requests naming none (the registry allows at most one)."""
        return next((v.version for v in self.versions.values() if v.is_active and v.servable), None)


RegistryView = Mapping[str, RegisteredModel]


def read_registry() -> dict[str, RegisteredModel]:
    """Every model and its versions, in one query; runs in a thread that may use the database."""
    from .models import MLModel

    columns = (
        "name", "task", "inputs", "outputs", "max_batch_size", "max_delay_ms", "queue_capacity",
        "shadow_version", "shadow_sample_pct", "canary_version", "canary_weight_pct", "canary_max_error_pct",
        "canary_max_p99_ms",
        "versions__version", "versions__status", "versions__is_active", "versions__checksum",
    )
    found: dict[str, RegisteredModel] = {}
    versions: dict[str, dict[int, RegisteredVersion]] = {}
    # A LEFT JOIN: a model without versions comes back once, with None for the version's columns.
    for row in MLModel.objects.order_by("name", "versions__version").values_list(*columns):
        name, task, inputs, outputs, max_batch_size, max_delay_ms, queue_capacity = row[:7]
        number, status, is_active, checksum = row[13:]
        if name not in found:
            versions[name] = {}
            found[name] = RegisteredModel(
                name=name, task=task, inputs=tuple(inputs), outputs=outputs,
                batching=batching(max_batch_size, max_delay_ms, queue_capacity), versions=versions[name],
                rollout=Rollout(*row[7:13]),
            )
        if number is not None:
            versions[name][number] = RegisteredVersion(number, status, bool(is_active), checksum)
    return found


def batching(max_batch_size: int | None, max_delay_ms: float | None, queue_capacity: int | None) -> Batching:
    """A model's batcher options, the platform's defaults filling what the registry leaves empty."""
    return Batching(
        max_batch_size=max_batch_size or settings.PLATFORM_MAX_BATCH_SIZE,
        max_delay_ms=max_delay_ms if max_delay_ms is not None else settings.PLATFORM_MAX_DELAY_MS,
        queue_capacity=queue_capacity or settings.PLATFORM_QUEUE_CAPACITY,
        inline_below_ms=settings.PLATFORM_INLINE_CALLS_BELOW_MS,
    )


def fetch_versions(wanted: Iterable[tuple[str, int]]) -> dict[tuple[str, int], ModelVersion]:
    """The registry rows of ``(model, version)`` pairs, with their model, in one query; absent ones are left out."""
    from django.db.models import Q

    from .models import ModelVersion

    pairs = list(wanted)
    if not pairs:
        return {}
    match = Q()
    for name, number in pairs:
        match |= Q(model__name=name, version=number)
    return {
        (row.model.name, row.version): row
        for row in ModelVersion.objects.select_related("model").filter(match)
    }
