"""The architecture, enforced: dependencies point one way, and no module grows past a readable size."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
#: Source folders whose modules are held to MAX_MODULE_LINES (migrations are generated, not read).
SOURCE_FOLDERS = ("platform_core", "streaming", "inference", "monitoring", "frontend", "bench", "scripts", "tests")
MAX_MODULE_LINES = 450


def test_each_app_imports_only_the_apps_below_it():
    """platform_core > frontend > streaming > monitoring > inference (the contract is in .importlinter)."""
    result = subprocess.run(
        [str(LINT_IMPORTS), "--config", str(REPO_ROOT / ".importlinter"), "--no-cache"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"Contracts: [1-9]\d* kept, 0 broken", result.stdout), result.stdout


def lint_copy_with(tmp_path: Path, module: str, source: str) -> subprocess.CompletedProcess[str]:
    """The contracts checked on a copy of the apps with ``module`` (a path under the apps) added."""
    for name in ("platform_core", "frontend", "streaming", "monitoring", "inference"):
        for path in (REPO_ROOT / name).rglob("*.py"):
            target = tmp_path / path.relative_to(REPO_ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(path.read_text())
    (tmp_path / module).write_text(source)
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(REPO_ROOT / ".importlinter"), "--no-cache"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )


def test_the_layer_contract_catches_an_upward_import(tmp_path):
    """The same contract on a copy of the apps with one upward import added must break."""
    result = lint_copy_with(tmp_path, "inference/upward.py", "from monitoring import events  # noqa\n")
    assert result.returncode != 0, result.stdout
    assert "inference.upward -> monitoring.events" in result.stdout, result.stdout


def test_the_client_contract_catches_a_django_import(tmp_path):
    """The prediction client must stay usable without Django: importing it breaks its contract."""
    result = lint_copy_with(tmp_path, "streaming/client/leak.py", "from django.conf import settings  # noqa\n")
    assert result.returncode != 0, result.stdout
    assert "streaming.client.leak -> django" in result.stdout, result.stdout


def test_no_module_is_longer_than_a_reader_can_hold():
    too_long = {}
    for folder in SOURCE_FOLDERS:
        for path in (REPO_ROOT / folder).rglob("*.py"):
            if "migrations" in path.parts or ".venv" in path.parts:
                continue
            lines = sum(1 for _ in path.open(encoding="utf-8"))
            if lines > MAX_MODULE_LINES:
                too_long[str(path.relative_to(REPO_ROOT))] = lines
    assert not too_long, f"Modules over {MAX_MODULE_LINES} lines: {too_long}"
