"""Prometheus's multiprocess mode: the directory the processes share, the check that it is set up right.

prometheus_client reads ``PROMETHEUS_MULTIPROC_DIR`` once, when it is first
imported, so it must be in the environment before the process starts, never
set from Python.
"""

from __future__ import annotations

import os

from django.core.exceptions import ImproperlyConfigured
from prometheus_client import multiprocess, values


def multiprocess_dir() -> str | None:
    """The directory shared by the processes of this deployment, or None in single-process mode."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def check_mode() -> None:
    """Raise ImproperlyConfigured when the environment and prometheus_client disagree on the mode."""
    configured = multiprocess_dir() is not None
    active = bool(getattr(values.ValueClass, "_multiprocess", False))
    if configured and not active:
        raise ImproperlyConfigured(
            "PROMETHEUS_MULTIPROC_DIR is set, but prometheus_client was imported before it was: "
            "set it in the environment before the process starts, not from Python."
        )
    if active and not configured:
        raise ImproperlyConfigured(
            "prometheus_client runs in multiprocess mode, but PROMETHEUS_MULTIPROC_DIR is no longer set: "
            "set it in the environment before the process starts and leave it there."
        )


def mark_process_dead() -> None:
    """Drop this process's live gauges from the multiprocess directory; its counters stay in the totals."""
    path = multiprocess_dir()
    if path is not None and os.path.isdir(path):
        multiprocess.mark_process_dead(os.getpid(), path)
