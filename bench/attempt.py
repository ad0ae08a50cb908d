"""One optional scenario of ``make bench``: run it, or say why it could not run and go on with the rest."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def attempt(title: str, run: Callable[[], T], errors: tuple[type[BaseException], ...]) -> T | None:
    """``run()``'s result, or None (the reason printed) if it raised one of ``errors``."""
    print(f"bench: {title}", flush=True)
    try:
        return run()
    except errors as exc:
        print(f"bench: the {title} failed: {exc}", file=sys.stderr, flush=True)
        return None
