"""Setting, changing, promoting and aborting a model's rollout: the one way the admin, the command and the API take.

The rules of ``inference.deployment`` hold here too: each change runs in one
transaction with the model's row locked, is recorded as a ``DeploymentEvent``
and sends ``catalog_changed`` once committed, so every server process
reconciles (loads the shadow or canary, or lets it go) as it does for a swap.

- a shadow or canary is a registered version that may serve (staged), other
  than the active one, whose file still matches its checksum;
- promoting makes the canary (or, with none, the shadow) the active version,
  audited as an activation that rollback can undo, and ends the rollout;
- aborting ends the rollout (the shadow and the canary), leaving the active
  version as it was.
"""

from __future__ import annotations

import logging

from django.db import transaction

from ..deployment import ACTIVATED, _announce, _Audit, _lock, _servable, _switch, _verified, get_model, get_version
from ..exceptions import DeploymentConflict, InvalidDeployment
from ..models import DeploymentEvent, MLModel, ModelVersion

logger = logging.getLogger(__name__)

_Action = DeploymentEvent.Action
SHADOW_SET, CANARY_SET, PROMOTED, ABORTED = (
    str(action) for action in (_Action.SHADOW_SET, _Action.CANARY_SET, _Action.PROMOTED, _Action.ABORTED)
)
#: Marks an optional argument left as it is.
UNCHANGED = object()


def _percent(value: object, field: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidDeployment(f"{field} must be a percentage between 0 and 100, not {value!r}.") from None
    if not 0 <= number <= 100:
        raise InvalidDeployment(f"{field} must be a percentage between 0 and 100, not {value!r}.")
    return number


def _limit(value: object, field: str, *, percent: bool) -> float | None:
    if value is None or value == "":
        return None
    if percent:
        return _percent(value, field)
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = -1.0
    if not 0 < number < float("inf"):
        raise InvalidDeployment(f"{field} must be a positive number of milliseconds, not {value!r}.")
    return number


def _candidate(mlmodel: MLModel, number: int, role: str, audit: _Audit) -> ModelVersion:
    """The version to make the shadow or the canary: servable, not active, its file intact."""
    version = get_version(mlmodel, number)
    _servable(version)
    if version.is_active:
        raise DeploymentConflict(f"{version} is the active version: it cannot also be the {role}.")
    _verified(version, audit)
    return version


def set_shadow(model: MLModel | str, version: int | None, *, sample_pct: object = 100.0, actor: str, source: str,
               address: str = "") -> MLModel:
    """Make ``version`` the model's shadow, copied ``sample_pct`` percent of the active version's requests.

    ``version=None`` removes the shadow.
    """
    audit = _Audit.of(actor, source, address)
    mlmodel = get_model(model)
    sample = _percent(sample_pct, "The shadow's sample")
    target = _candidate(mlmodel, version, "shadow", audit) if version is not None else None
    with transaction.atomic():
        _lock(mlmodel.pk)
        mlmodel.refresh_from_db()
        previous = mlmodel.shadow_version
        if target is None and previous is None:
            raise DeploymentConflict(f"{mlmodel.name} has no shadow version to remove.")
        mlmodel.shadow_version = target.version if target is not None else None
        mlmodel.shadow_sample_pct = sample if target is not None else 100.0
        mlmodel.save(update_fields=["shadow_version", "shadow_sample_pct"])
        recorded = target if target is not None else get_version(mlmodel, previous)  # type: ignore[arg-type]
        detail = f"shadow at {sample:g}% of requests" if target is not None else "shadow removed"
        audit.record(recorded, SHADOW_SET, detail + (f" (was v{previous})" if previous not in (None, version) else ""))
        _announce(mlmodel, SHADOW_SET, recorded.version)
    logger.info("%s: %s by %s (%s)", mlmodel.name, detail, audit.actor, audit.source)
    return mlmodel


def set_canary(model: MLModel | str, version: int | None, *, weight_pct: object = 0.0, actor: str, source: str,
               address: str = "", max_error_pct: object = UNCHANGED, max_p99_ms: object = UNCHANGED) -> MLModel:
    """Make ``version`` the model's canary, answering ``weight_pct`` percent of the requests naming no version.

    ``version=None`` removes the canary. ``max_error_pct`` and ``max_p99_ms``
    set the limits past which the canary is aborted automatically (None: no limit).
    """
    audit = _Audit.of(actor, source, address)
    mlmodel = get_model(model)
    weight = _percent(weight_pct, "The canary's weight")
    limits = {}
    if max_error_pct is not UNCHANGED:
        limits["canary_max_error_pct"] = _limit(max_error_pct, "The canary's error limit", percent=True)
    if max_p99_ms is not UNCHANGED:
        limits["canary_max_p99_ms"] = _limit(max_p99_ms, "The canary's p99 limit", percent=False)
    target = _candidate(mlmodel, version, "canary", audit) if version is not None else None
    with transaction.atomic():
        _lock(mlmodel.pk)
        mlmodel.refresh_from_db()
        previous = mlmodel.canary_version
        if target is None and previous is None:
            raise DeploymentConflict(f"{mlmodel.name} has no canary version to remove.")
        mlmodel.canary_version = target.version if target is not None else None
        mlmodel.canary_weight_pct = weight if target is not None else 0.0
        for field, value in limits.items():
            setattr(mlmodel, field, value)
        mlmodel.save(update_fields=["canary_version", "canary_weight_pct", *limits])
        recorded = target if target is not None else get_version(mlmodel, previous)  # type: ignore[arg-type]
        detail = f"canary at {weight:g}% of requests" if target is not None else "canary removed"
        if mlmodel.canary_max_error_pct is not None or mlmodel.canary_max_p99_ms is not None:
            detail += (f", aborted past {mlmodel.canary_max_error_pct or '-'}% errors or "
                       f"{mlmodel.canary_max_p99_ms or '-'} ms p99")
        audit.record(recorded, CANARY_SET, detail + (f" (was v{previous})" if previous not in (None, version) else ""))
        _announce(mlmodel, CANARY_SET, recorded.version)
    logger.info("%s: %s by %s (%s)", mlmodel.name, detail, audit.actor, audit.source)
    return mlmodel


def _clear(mlmodel: MLModel) -> None:
    mlmodel.shadow_version = mlmodel.canary_version = None
    mlmodel.shadow_sample_pct, mlmodel.canary_weight_pct = 100.0, 0.0
    mlmodel.save(update_fields=["shadow_version", "shadow_sample_pct", "canary_version", "canary_weight_pct"])


def promote(model: MLModel | str, *, actor: str, source: str, address: str = "") -> ModelVersion:
    """Make the canary (or, with no canary, the shadow) the active version, and end the rollout; return it."""
    audit = _Audit.of(actor, source, address)
    mlmodel = get_model(model)
    number = mlmodel.canary_version if mlmodel.canary_version is not None else mlmodel.shadow_version
    if number is None:
        raise DeploymentConflict(f"{mlmodel.name} has no canary or shadow version to promote.")
    role = "canary" if mlmodel.canary_version is not None else "shadow"
    target = get_version(mlmodel, number)
    _servable(target)
    _verified(target, audit)
    with transaction.atomic():
        _lock(mlmodel.pk)
        mlmodel.refresh_from_db()
        if number not in (mlmodel.canary_version, mlmodel.shadow_version):
            raise DeploymentConflict(f"The rollout of {mlmodel.name} changed meanwhile; look again and retry.")
        _clear(mlmodel)
        _switch(target, audit, ACTIVATED)
        audit.record(target, PROMOTED, f"{role} promoted to active")
    logger.info("%s: %s v%d promoted by %s (%s)", mlmodel.name, role, number, audit.actor, audit.source)
    return target


def abort(model: MLModel | str, *, actor: str, source: str, address: str = "", reason: str = "",
          canary: int | None = None) -> MLModel:
    """End the model's rollout: no shadow, no canary; the active version serves everything.

    With ``canary``, only if that version is still the canary (the automatic
    abort, which several processes may decide at once).
    """
    audit = _Audit.of(actor, source, address)
    mlmodel = get_model(model)
    with transaction.atomic():
        _lock(mlmodel.pk)
        mlmodel.refresh_from_db()
        number = mlmodel.canary_version if mlmodel.canary_version is not None else mlmodel.shadow_version
        if number is None or (canary is not None and mlmodel.canary_version != canary):
            raise DeploymentConflict(f"{mlmodel.name} has no rollout to abort.")
        detail = ", ".join(f"{role} v{n} removed" for role, n in
                           (("canary", mlmodel.canary_version), ("shadow", mlmodel.shadow_version)) if n is not None)
        _clear(mlmodel)
        audit.record(get_version(mlmodel, number), ABORTED, detail + (f": {reason}" if reason else ""))
        _announce(mlmodel, ABORTED, number)
    logger.warning("%s: rollout aborted by %s (%s)%s", mlmodel.name, audit.actor, audit.source,
                   f": {reason}" if reason else "")
    return mlmodel


__all__ = ["UNCHANGED", "abort", "promote", "set_canary", "set_shadow"]
