"""What the pool tells observers when what it serves changes, and who listens.

The pool does not know its observers: ``platform_core.wiring`` registers
them (the metrics, the open connections' catalog push). Two kinds of news:

- a :class:`CatalogChange` after a model's entry was swapped, added or
  removed, when what clients see of it (the ``models`` object) changed;
- a :class:`SwapFact` for each step of a swap: a version loaded (with its
  load and warm-up time), a version that failed to load, the active version
  replaced, a version dropped.

Observers are called on the event loop (``load_all`` at start-up calls the
fact observers from the thread that loads, before the loop runs); each must
return at once, and one that raises is logged and never costs the swap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CatalogChange:
    """One model's entry in the catalog (the protocol's ``models`` object), before and after a change."""

    model: str
    #: ``ServedModel.describe()`` before and after; None where the model was not, or is no longer, served.
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None


class SwapStep(StrEnum):
    """What happened to one version."""

    #: Loaded and warmed up, not serving yet; ``seconds`` is the load and warm-up time.
    LOADED = "loaded"
    #: Could not be loaded; ``error`` says why. The version served before goes on serving.
    LOAD_FAILED = "load_failed"
    #: Now serves requests that name no version; ``previous`` is the version it replaced.
    ACTIVATED = "activated"
    #: Dropped from the catalog; its batcher closes once it has served what it holds.
    DROPPED = "dropped"


@dataclass(frozen=True, slots=True)
class SwapFact:
    """One step of a swap, for the metrics and the logs."""

    step: SwapStep
    model: str
    version: int | None
    previous: int | None = None
    seconds: float | None = None
    error: str | None = None


CatalogObserver = Callable[[CatalogChange], None]
SwapObserver = Callable[[SwapFact], None]

# Process-wide, like the batch observers: the observers do not need to know which pool serves.
_catalog_observers: list[CatalogObserver] = []
_swap_observers: list[SwapObserver] = []


def observe_catalog(observer: CatalogObserver) -> None:
    """Call ``observer(change)`` on the event loop after each change to a model's catalog entry."""
    if observer not in _catalog_observers:
        _catalog_observers.append(observer)


def observe_swaps(observer: SwapObserver) -> None:
    """Call ``observer(fact)`` for every load, failed load, activation and drop of a model version."""
    if observer not in _swap_observers:
        _swap_observers.append(observer)


def stop_observing(observer: CatalogObserver | SwapObserver) -> None:
    """Forget an observer registered with :func:`observe_catalog` or :func:`observe_swaps`."""
    for observers in (_catalog_observers, _swap_observers):
        while observer in observers:
            observers.remove(observer)  # type: ignore[arg-type]


def catalog_changed(change: CatalogChange) -> None:
    for observer in list(_catalog_observers):
        try:
            observer(change)
        except Exception:  # an observer must never cost a swap
            logger.exception("Catalog observer %r failed", observer)


def swap_fact(fact: SwapFact) -> None:
    for observer in list(_swap_observers):
        try:
            observer(fact)
        except Exception:
            logger.exception("Swap observer %r failed", observer)
