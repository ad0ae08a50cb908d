"""What one model should serve in this process, given what it serves now and what the registry says.

The rules, applied to each model on every reconcile:

- the registry's active version serves requests that name no version, once
  it is loaded and warm; until then (or if it fails to load) the version
  this process served keeps serving;
- the version it replaced stays loaded as the standby, so that a rollback is
  an instant swap; at most one standby per model, so memory does not grow
  with swaps;
- the model's shadow and canary versions (``inference.rollout``) are loaded
  and kept beside the active one while the registry names them; each takes
  part in serving only once loaded;
- every other loaded version is dropped: its batcher finishes what it holds
  and closes;
- a retired or deleted version is dropped even if it was the active one, and
  answers ``unknown_model``; a staged version that is not kept loaded answers
  ``model_unavailable``; so does a failed one, with the reason.

Pure functions of their arguments: the pool (``inference.service``) does the
loading, the swapping and the draining.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from .loading import new_entry
from .registry import FAILED, RegisteredModel
from .served import ServedModel, ServedVersion

#: What a version marked failed in the registry answers.
FAILED_IN_REGISTRY = "This version failed validation and is marked failed in the registry."


@dataclass(frozen=True, slots=True)
class Converged:
    """A model's new state: what to serve, and the loaded versions it no longer needs."""

    served: ServedModel
    dropped: tuple[ServedVersion, ...]
    #: Whether ``served`` differs from what was served (a new object to swap in).
    changed: bool


def loaded_versions(current: ServedModel | None) -> dict[int, ServedVersion]:
    """The versions of ``current`` that are loaded and serving."""
    if current is None:
        return {}
    return {number: entry for number, entry in current.versions.items() if entry.ready}


def rollout_versions(registered: RegisteredModel) -> tuple[int, ...]:
    """The shadow and canary versions the registry names that may serve (not retired, not failed)."""
    return tuple(
        number for number in registered.rollout.versions()
        if (version := registered.versions.get(number)) is not None and version.servable
    )


def versions_to_load(current: ServedModel | None, registered: RegisteredModel, *,
                     not_now: Collection[int] = ()) -> list[int]:
    """The versions to load before ``registered`` can be served: its active one, then its shadow and canary,
    each unless loaded or in ``not_now``."""
    loaded = loaded_versions(current)
    targets = dict.fromkeys((registered.active_version, *rollout_versions(registered)))
    return [number for number in targets if number is not None and number not in loaded and number not in not_now]


def converge(current: ServedModel | None, registered: RegisteredModel, *,
             new: Mapping[int, ServedVersion] | None = None, errors: Mapping[int, str] | None = None) -> Converged:
    """The model as it should be served, given the versions just loaded (``new``) and those that failed (``errors``)."""
    new = new or {}
    errors = errors or {}
    loaded = {**loaded_versions(current), **new}

    def keepable(number: int | None) -> bool:
        version = registered.versions.get(number) if number is not None else None
        return version is not None and version.servable and number in loaded

    served_active = current.active_version if current is not None else None
    served_standby = current.standby_version if current is not None else None
    target = registered.active_version
    active: int | None
    candidates: tuple[int | None, ...]
    if target is not None and target in loaded:
        active, candidates = target, (served_active, served_standby)
    elif target is not None:
        # Not loaded (it failed): what this process served goes on serving.
        active = served_active if keepable(served_active) else target
        candidates = (served_standby,)
    else:
        active, candidates = None, (served_active, served_standby)
    standby = next((number for number in candidates if number != active and keepable(number)), None)

    versions: dict[int, ServedVersion] = {}
    for number in (active, standby, *rollout_versions(registered)):
        if number is not None and keepable(number):
            versions[number] = loaded[number]
    for number, version in registered.versions.items():
        if number in versions:
            continue
        reason = errors.get(number) if version.servable else FAILED_IN_REGISTRY if version.status == FAILED else None
        if reason is not None:
            versions[number] = _failed_entry(current, registered, number, reason)
    unloaded = frozenset(number for number, version in registered.versions.items()
                         if version.servable and number not in versions)
    served = ServedModel(
        name=registered.name, task=registered.task, inputs=list(registered.inputs), outputs=registered.outputs,
        active_version=active, versions=dict(sorted(versions.items())), standby_version=standby, unloaded=unloaded,
        rollout=registered.rollout,
    )
    dropped = tuple(entry for number, entry in loaded.items() if versions.get(number) is not entry)
    if current is not None and _same(current, served):
        return Converged(current, dropped, changed=False)
    return Converged(served, dropped, changed=True)


def _failed_entry(current: ServedModel | None, registered: RegisteredModel, number: int,
                  reason: str) -> ServedVersion:
    """An entry that answers ``model_unavailable`` with ``reason``; the one already served if it says the same."""
    previous = current.versions.get(number) if current is not None else None
    if previous is not None and not previous.ready and previous.error == reason:
        return previous
    return new_entry(registered.name, number, registered.task, registered.inputs, registered.outputs, error=reason)


def _same(current: ServedModel, served: ServedModel) -> bool:
    return (
        current.active_version == served.active_version
        and current.standby_version == served.standby_version
        and current.unloaded == served.unloaded
        and current.rollout == served.rollout
        and (current.task, current.inputs, current.outputs) == (served.task, served.inputs, served.outputs)
        and current.versions.keys() == served.versions.keys()
        and all(current.versions[number] is entry for number, entry in served.versions.items())
    )
