"""Receiving a model artifact: copied into the model store's incoming folder, measured and hashed on the way.

Whatever the way in (a path for the commands, an uploaded file for the admin
and the API), the bytes are read once, in chunks, at most one byte past
``PLATFORM_MAX_ARTIFACT_BYTES``: a runaway upload costs neither memory nor
more disk than the limit. ``inference.validation`` then checks the copy, and
``inference.deployment`` moves it to its content-addressed place or discards it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from django.conf import settings

from .artifacts import model_store
from .exceptions import ArtifactTooLarge, CorruptArtifact, InvalidDeployment

DEFAULT_MAX_ARTIFACT_BYTES = 256 * 1024 * 1024
#: File name endings of each framework's artifacts (Keras refuses to load a file without its own).
SUFFIXES = {"sklearn": ".skops", "keras": ".keras"}
#: Where uploads wait, inside the model store, while they are checked: a move from there is a rename.
INCOMING_DIR = ".incoming"
_CHUNK_BYTES = 1 << 20


def max_artifact_bytes() -> int:
    return int(getattr(settings, "PLATFORM_MAX_ARTIFACT_BYTES", DEFAULT_MAX_ARTIFACT_BYTES))


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


def _too_large(size: int | None) -> ArtifactTooLarge:
    what = f"is {_mib(size)}, which is" if size is not None else "is"
    return ArtifactTooLarge(
        f"The artifact {what} larger than the limit of {_mib(max_artifact_bytes())} "
        "(PLATFORM_MAX_ARTIFACT_BYTES); make the model smaller or ask an operator to raise the limit."
    )


@dataclass(frozen=True)
class ReceivedArtifact:
    """An uploaded file copied into the model store's incoming folder, with its size and SHA-256."""

    path: Path
    #: ``path`` relative to the model store, as the registry records artifacts.
    relative: str
    checksum: str
    size_bytes: int
    #: The name the file had where it came from, for the audit.
    filename: str

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    while chunk := handle.read(_CHUNK_BYTES):
        yield chunk


def receive(source: Path | str | IO[bytes], *, framework: str, filename: str = "") -> ReceivedArtifact:
    """Copy an artifact (a path, or a file object such as an upload) into the store's incoming folder.

    Raises ``ArtifactTooLarge``, ``CorruptArtifact`` (empty) or ``InvalidDeployment`` (no such file,
    unknown framework).
    """
    suffix = SUFFIXES.get(framework)
    if suffix is None:
        raise InvalidDeployment(f"Unknown framework {framework!r}; choose one of {', '.join(SUFFIXES)}.")
    limit = max_artifact_bytes()
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise InvalidDeployment(f"There is no artifact file at {path}.")
        if path.stat().st_size > limit:
            raise _too_large(path.stat().st_size)
        with open(path, "rb") as handle:
            return receive(handle, framework=framework, filename=filename or path.name)
    declared = getattr(source, "size", None)  # Django's uploaded files know their size
    if isinstance(declared, int) and declared > limit:
        raise _too_large(declared)

    incoming = model_store() / INCOMING_DIR
    incoming.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    fd, name = tempfile.mkstemp(dir=incoming, suffix=suffix)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in _chunks(source):
                size += len(chunk)
                if size > limit:
                    raise _too_large(declared if isinstance(declared, int) and declared > limit else None)
                digest.update(chunk)
                out.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if size == 0:
        path.unlink(missing_ok=True)
        raise CorruptArtifact("The artifact file is empty; upload the file the model was saved to.")
    relative = path.relative_to(model_store()).as_posix()
    filename = filename or Path(getattr(source, "name", "") or "").name
    return ReceivedArtifact(path, relative, digest.hexdigest(), size, filename)


__all__ = ["INCOMING_DIR", "SUFFIXES", "ReceivedArtifact", "max_artifact_bytes", "receive"]
