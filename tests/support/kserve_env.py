"""The ``kserve`` SDK in a virtual environment of its own, for tests of its client against the platform.

kserve 0.21 requires protobuf below 7 and imports its whole model server
(FastAPI, uvicorn, the Kubernetes client, pandas...) with ``import kserve``;
the platform runs protobuf 7, so the SDK cannot live in its environment.
The environment is made once per machine under the user's cache directory
and reused while its requirements stay the same.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench import side_environment

REQUIREMENTS = ("kserve==0.21.0",)
INSTALL_TIMEOUT_S = 900


class KServeUnavailable(Exception):
    """The kserve environment could not be made."""


def cache_directory() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "channels-inference-platform" / "kserve-env"


def kserve_python(directory: Path | None = None) -> Path:
    """The Python of the kserve environment, made if missing or stale."""
    try:
        return side_environment.python_of(directory or cache_directory(), REQUIREMENTS,
                                          timeout_s=INSTALL_TIMEOUT_S)
    except side_environment.SideEnvironmentError as exc:
        raise KServeUnavailable(str(exc)) from exc
