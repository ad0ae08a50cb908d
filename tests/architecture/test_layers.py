"""The architecture, enforced: dependencies point one way, and no module grows past a readable size."""

from __future__ import annotations

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
    assert "1 kept, 0 broken" in result.stdout, result.stdout


def test_the_layer_contract_catches_an_upward_import(tmp_path):
    """The same contract on a copy of the apps with one upward import added must break."""
    for name in ("platform_core", "frontend", "streaming", "monitoring", "inference"):
        for source in (REPO_ROOT / name).rglob("*.py"):
            target = tmp_path / source.relative_to(REPO_ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(source.read_text())
    upward = tmp_path / "inference" / "upward.py"
    upward.write_text("from monitoring import events  # noqa\n")
    result = subprocess.run(
        [str(LINT_IMPORTS), "--config", str(REPO_ROOT / ".importlinter"), "--no-cache"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0, result.stdout
    assert "inference.upward -> monitoring.events" in result.stdout, result.stdout


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
