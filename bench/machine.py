"""Facts about the machine and the software a benchmark ran on, recorded next to its numbers."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from typing import Any

from .servers import REPO_ROOT

PACKAGES = (
    "django", "channels", "daphne", "twisted", "autobahn", "websockets", "numpy", "scikit-learn",
    "tensorflow", "keras", "orjson", "msgpack", "prometheus-client", "py-spy",
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def facts() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "packages": versions,
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
    }


def describe(machine: dict[str, Any]) -> str:
    """One line: ``AMD EPYC, 2 cores, 23.4 GiB, Python 3.11.7``."""
    return (
        f"{machine['cpu_model']}, {machine['cpu_cores']} cores, {machine['memory_gib']} GiB, "
        f"Python {machine['python']}"
    )
