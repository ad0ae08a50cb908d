"""Frames of the protocol: JSON text frames or MessagePack binary frames, one message each."""

from __future__ import annotations

import json
from typing import Any

from .errors import ProtocolViolation

try:
    import msgpack
except ImportError:  # a JSON client needs nothing beyond websockets
    msgpack = None

ENCODINGS = ("json", "msgpack")


class Codec:
    """Encodes requests in the client's chosen encoding; decodes a reply by the kind of frame it came in."""

    def __init__(self, encoding: str = "json") -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"The encoding must be one of {', '.join(ENCODINGS)}, not {encoding!r}.")
        if encoding == "msgpack" and msgpack is None:
            raise ValueError("The msgpack encoding needs the msgpack package: pip install msgpack.")
        self.encoding = encoding

    def encode(self, message: dict[str, Any]) -> str | bytes:
        """The frame carrying ``message``; raises ``TypeError`` or ``ValueError`` for what cannot be encoded."""
        if self.encoding == "msgpack":
            return bytes(msgpack.packb(message, use_bin_type=True))
        # The server refuses NaN and Infinity: fail here, with the caller, rather than in a reply.
        return json.dumps(message, separators=(",", ":"), allow_nan=False)

    def decode(self, frame: str | bytes) -> dict[str, Any]:
        """The message in a frame from the server: text frames are JSON, binary frames MessagePack."""
        if isinstance(frame, bytes) and msgpack is None:
            raise ProtocolViolation("The server sent a binary (MessagePack) frame and msgpack is not installed.")
        try:
            message = json.loads(frame) if isinstance(frame, str) else msgpack.unpackb(frame, raw=False)
        except Exception as exc:
            raise ProtocolViolation(f"The server sent a frame that is not a message: {exc}") from None
        if not isinstance(message, dict):
            raise ProtocolViolation(f"The server sent a {type(message).__name__}, not a message object.")
        return message
