"""Giving the heap's free pages back to the operating system after a model load.

Loading a version allocates far more than it keeps: the artifact's bytes,
the framework's parsing, the ONNX conversion's protobuf objects. glibc keeps
what was freed in the arena of the thread that allocated it, so a loader
thread's first load leaves its arena several MiB larger for good and the
process's RSS reads as if the swap had leaked. ``malloc_trim(0)`` returns
those free pages; it takes a few milliseconds once per load, off the event
loop. Where the C library has no ``malloc_trim`` (musl, macOS) this does
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Any

logger = logging.getLogger(__name__)

_NOT_LOOKED_UP = object()
#: The C library's malloc_trim, None where there is none, or _NOT_LOOKED_UP before the first call.
_malloc_trim: Any = _NOT_LOOKED_UP


def _lookup() -> Any:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_free_heap() -> bool:
    """Return the heap's free pages to the operating system; whether the C library could."""
    global _malloc_trim
    if _malloc_trim is _NOT_LOOKED_UP:
        _malloc_trim = _lookup()
    if _malloc_trim is None:
        return False
    try:
        _malloc_trim(0)
    except Exception:  # never worth failing a load over
        logger.debug("malloc_trim failed", exc_info=True)
        return False
    return True
