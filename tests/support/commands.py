"""``manage.py`` in a subprocess, with the environment of a platform process, and the demo data it prepares."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MANAGE_PY = REPO_ROOT / "manage.py"

# Variables of the test process that must not leak into a server under test:
# tests/settings.py sets some of them, and a developer's shell may set others.
_PARENT_ONLY = re.compile(r"^(DJANGO_|PLATFORM_|DATABASE_URL$|REDIS_URL$|PYTEST_)")


class CommandFailed(Exception):
    """A ``manage.py`` command run in a subprocess exited with an error."""

    def __init__(self, message: str, result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(message)
        self.result = result


def platform_env(data_dir: Path, overrides: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The environment of a platform process on its embedded defaults, with ``overrides`` on top.

    An override of ``None`` removes the variable, e.g. ``{"DJANGO_DEBUG": None}``
    for production mode.
    """
    env = {name: value for name, value in os.environ.items() if not _PARENT_ONLY.match(name)}
    env.update(
        DJANGO_SETTINGS_MODULE="platform_core.settings",
        DJANGO_DEBUG="1",
        PLATFORM_DATA_DIR=str(data_dir),
        PLATFORM_PRELOAD_MODELS="1",
        PYTHONUNBUFFERED="1",
        KERAS_BACKEND="tensorflow",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    for name, value in (overrides or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def manage(
    *args: str, env: Mapping[str, str], timeout_s: float = 300.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``manage.py`` with ``args`` in a subprocess; raise ``CommandFailed`` if ``check`` and it fails."""
    result = subprocess.run(
        [sys.executable, str(MANAGE_PY), *args],
        cwd=REPO_ROOT, env=dict(env), capture_output=True, text=True, timeout=timeout_s,
    )
    if check and result.returncode != 0:
        raise CommandFailed(
            f"manage.py {' '.join(args)} exited with status {result.returncode}:\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}",
            result,
        )
    return result


@dataclass(frozen=True)
class DemoData:
    """A data directory migrated and holding the trained demo models; copy it, never serve it."""

    data_dir: Path
    env: dict[str, str]
    registry_fixture: Path

    def copy_to(self, data_dir: Path, *, with_database: bool = True) -> None:
        """Copy the model store, and unless told otherwise the SQLite database, into ``data_dir``."""
        if with_database:
            shutil.copytree(self.data_dir, data_dir, dirs_exist_ok=True)
        else:
            shutil.copytree(self.data_dir / "models", data_dir / "models", dirs_exist_ok=True)


def prepare_demo_data(directory: Path) -> DemoData:
    """Migrate a fresh data directory and train the demo models into it."""
    data_dir = directory / "data"
    env = platform_env(data_dir)
    manage("migrate", "--no-input", env=env)
    manage("load_demo_models", env=env)
    # The registry rows, to load into another database (e.g. PostgreSQL) next to a copy of the files.
    registry_fixture = directory / "demo-registry.json"
    manage("dumpdata", "inference.mlmodel", "inference.modelversion", "--output", str(registry_fixture), env=env)
    return DemoData(data_dir=data_dir, env=env, registry_fixture=registry_fixture)

