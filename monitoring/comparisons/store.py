"""Writing the aggregated comparisons to the database: one upsert per version pair and minute, in bulk.

Several processes (and several flushes of one process) add to the same
minute's row: each adds its counts to the row (``F()`` expressions, so no
increment is lost) and raises its maxima (``Greatest``); the row is created
by whoever comes first, and a process that loses that race adds to the
winner's row instead. Disagreements are inserted in one ``bulk_create`` and
each model keeps only its latest ``kept`` of them.
"""

from __future__ import annotations

from datetime import UTC, datetime

from django.db import IntegrityError, transaction
from django.db.models import F
from django.db.models.functions import Greatest

from .aggregate import Bucket, PairMinute
from .models import ShadowComparison, ShadowDisagreement

_SUMMED = ("requests", "rows", "agreed_rows", "sum_abs_diff", "primary_ms_sum", "shadow_ms_sum", "failed", "dropped")
_MAXIMA = ("max_abs_diff", "primary_ms_max", "shadow_ms_max")


def _moment(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def _add(key: PairMinute, bucket: Bucket) -> None:
    match = ShadowComparison.objects.filter(
        minute=_moment(key.minute), model=key.model, primary_version=key.primary_version,
        shadow_version=key.shadow_version,
    )
    changes = {name: F(name) + getattr(bucket, name) for name in _SUMMED}
    changes.update({name: Greatest(F(name), getattr(bucket, name)) for name in _MAXIMA})
    if match.update(**changes):
        return
    try:
        with transaction.atomic():
            ShadowComparison.objects.create(
                minute=_moment(key.minute), model=key.model, primary_version=key.primary_version,
                shadow_version=key.shadow_version,
                **{name: getattr(bucket, name) for name in (*_SUMMED, *_MAXIMA)},
            )
    except IntegrityError:  # another process created the row meanwhile
        match.update(**changes)


def write(buckets: dict[PairMinute, Bucket], *, kept: int) -> None:
    """Add ``buckets`` to the stored comparisons and their disagreements to the sample; runs off the event loop."""
    samples = [
        ShadowDisagreement(
            at=_moment(at), model=key.model, primary_version=key.primary_version, shadow_version=key.shadow_version,
            inputs=sample.inputs, primary_output=sample.primary, shadow_output=sample.shadow, abs_diff=sample.abs_diff,
        )
        for key, bucket in buckets.items() for at, sample in bucket.samples
    ]
    for key, bucket in sorted(buckets.items(), key=lambda item: (item[0].minute, item[0].model)):
        _add(key, bucket)
    if samples:
        ShadowDisagreement.objects.bulk_create(samples)
        for model in {sample.model for sample in samples}:
            _trim(model, kept)


def _trim(model: str, kept: int) -> None:
    """Keep the model's latest ``kept`` disagreements."""
    oldest_kept = (ShadowDisagreement.objects.filter(model=model).order_by("-id")
                   .values_list("id", flat=True)[kept:kept + 1])
    boundary = list(oldest_kept)
    if boundary:
        ShadowDisagreement.objects.filter(model=model, id__lte=boundary[0]).delete()
