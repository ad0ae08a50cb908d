"""A virtual environment of its own for software that cannot share the platform's (MLServer, the kserve SDK).

Made once under a directory and reused while its requirements stay the
same: a marker file holds the hash of the requirements it was made with.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path


class SideEnvironmentError(Exception):
    """The environment could not be made."""


def python_of(directory: Path, requirements: Sequence[str], *, timeout_s: float,
              announce: Callable[[], None] | None = None) -> Path:
    """The Python of the environment under ``directory`` with ``requirements``, made if missing or stale.

    ``announce`` is called before an install, which may take minutes.
    """
    marker = directory / "requirements.sha256"
    wanted = hashlib.sha256("\n".join(requirements).encode()).hexdigest()
    python = directory / "bin" / "python"
    if python.exists() and marker.exists() and marker.read_text().strip() == wanted:
        return python
    if announce is not None:
        announce()
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(directory)], check=True, capture_output=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *requirements], check=True,
                       capture_output=True, timeout=timeout_s)
    except subprocess.CalledProcessError as exc:
        raise SideEnvironmentError(f"Could not install {', '.join(requirements)} into {directory}: "
                                   f"{exc.stderr.decode(errors='replace')[-2000:]}") from exc
    except (subprocess.SubprocessError, OSError) as exc:
        raise SideEnvironmentError(f"Could not install {', '.join(requirements)} into {directory}: {exc}") from exc
    marker.write_text(wanted + "\n")
    return python
