"""The URLs of the servers the tests use."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit


def configured_url(variable: str, default: str, *, schemes: tuple[str, ...]) -> str:
    """The server to reuse: the URL in the environment ``variable`` if it has one of ``schemes``, else ``default``.

    A ``DATABASE_URL`` naming SQLite, say, configures the platform, not a server the tests could reuse.
    """
    url = os.environ.get(variable, "")
    return url if urlsplit(url).scheme in schemes else default


def with_path(url: str, path: str) -> str:
    """``url`` with its path replaced, e.g. another database on the same server."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))
