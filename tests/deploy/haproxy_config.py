"""deploy/haproxy/haproxy.cfg read into its sections, and checked by the real ``haproxy -c``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support.commands import REPO_ROOT

HAPROXY_CFG = REPO_ROOT / "deploy" / "haproxy" / "haproxy.cfg"


def sections(text: str) -> dict[str, list[str]]:
    """``{"backend platform": [its lines], ...}``, comments and blank lines left out."""
    parsed: dict[str, list[str]] = {}
    current: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not line[0].isspace():
            current = parsed.setdefault(line.strip(), [])
        else:
            current.append(" ".join(line.split()))
    return parsed


def directive(lines: list[str], name: str) -> list[str]:
    """The lines of a section that start with ``name``."""
    return [line for line in lines if line == name or line.startswith(name + " ")]


def haproxy_check(config: Path) -> subprocess.CompletedProcess[str]:
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(haproxy).exists():
        raise AssertionError("haproxy is not installed: scripts/system-deps.sh installs it (make test).")
    return subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True, text=True, timeout=60)
