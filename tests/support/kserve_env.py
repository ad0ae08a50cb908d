"""The ``kserve`` SDK in a virtual environment of its own, for tests of its client against the platform.

kserve 0.21 requires protobuf below 7 and imports its whole model server
(FastAPI, uvicorn, the Kubernetes client, pandas...) with ``import kserve``;
the platform runs protobuf 7, so the SDK cannot live in its environment.
The environment is made once per machine under the user's cache directory
and reused while its requirements stay the same.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

REQUIREMENTS = ("kserve==0.21.0",)
INSTALL_TIMEOUT_S = 900


class KServeUnavailable(Exception):
    """The kserve environment could not be made."""


def cache_directory() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "channels-inference-platform" / "kserve-env"


def kserve_python(directory: Path | None = None) -> Path:
    """The Python of the kserve environment, made if missing or stale."""
    directory = directory or cache_directory()
    marker = directory / "requirements.sha256"
    wanted = hashlib.sha256("\n".join(REQUIREMENTS).encode()).hexdigest()
    python = directory / "bin" / "python"
    if python.exists() and marker.exists() and marker.read_text().strip() == wanted:
        return python
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(directory)], check=True, capture_output=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *REQUIREMENTS], check=True,
                       capture_output=True, timeout=INSTALL_TIMEOUT_S)
    except subprocess.CalledProcessError as exc:
        raise KServeUnavailable(f"Could not install {', '.join(REQUIREMENTS)} into {directory}: "
                                f"{exc.stderr.decode(errors='replace')[-2000:]}") from exc
    except (subprocess.SubprocessError, OSError) as exc:
        raise KServeUnavailable(f"Could not install {', '.join(REQUIREMENTS)} into {directory}: {exc}") from exc
    marker.write_text(wanted + "\n")
    return python
