"""Documents as requests carry them: JSON text and MessagePack bytes, parsed one way everywhere.

The WebSocket protocol parses client frames with these functions, and the
prediction log reads stored frames back with the same ones, so a frame is
understood the same way wherever it is read. Framework-free.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack
import orjson


class DecodeError(ValueError):
    """The bytes are not a valid document of their format; the message says why, as a full sentence."""


def loads_json(text: str | bytes) -> Any:
    """Parse JSON text (or its UTF-8 bytes); raises :class:`DecodeError`."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return _strict_json_fallback(text, exc)


def loads_msgpack(data: bytes) -> Any:
    """Parse MessagePack bytes (string map keys only); raises :class:`DecodeError`."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except msgpack.StackError:
        raise DecodeError("The frame is not valid MessagePack: it is nested too deeply.") from None
    except Exception as exc:
        reason = str(exc).rstrip(".") or type(exc).__name__
        raise DecodeError(f"The frame is not valid MessagePack: {reason}.") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _strict_json_fallback(text: str | bytes, error: orjson.JSONDecodeError) -> Any:
    """Parse what orjson refuses but JSON allows: numbers too large for a double.

    ``1e999`` is valid JSON that no double can hold; it reaches the schema as
    infinity and is refused there as ``invalid_input``, with the request's id.
    The non-standard ``NaN`` and ``Infinity`` literals stay invalid JSON.
    """
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        raise DecodeError(f"The frame is not valid JSON: {error.msg}.") from None
    except RecursionError:
        # orjson stops at its own depth limit; the standard parser recurses
        # until the interpreter's. Either way the document is refused.
        raise DecodeError(f"The frame is not valid JSON: {error.msg} (nested too deeply).") from None
