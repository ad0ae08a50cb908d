"""Client frames are unmasked with the ``websockets`` library's C ``apply_mask`` instead of autobahn's maskers.

Why: autobahn builds a CFFI masker object for every frame it receives, which
for a small frame costs many times the unmasking itself; the prediction
stream is made of small frames. Can go when autobahn's ``create_xor_masker``
is cheap for small frames.

The patch replaces the module global ``create_xor_masker`` of
``autobahn.websocket.protocol``, which autobahn's frame parser looks up for
every frame, in this process only.
"""

from __future__ import annotations

import autobahn.websocket.protocol
from autobahn.websocket.protocol import WebSocketProtocol
from websockets.speedups import apply_mask

from platform_core.server.internals import Attribute, Mentioned, require

INTERNALS = (
    Attribute("autobahn", autobahn.websocket.protocol, "create_xor_masker"),
    # Replacing the global works only while the parser calls it by that name.
    Mentioned("autobahn", WebSocketProtocol, "processData", "create_xor_masker"),
)


def check_internals() -> None:
    """Raise IncompatibleDependency if the installed autobahn lacks what this patch replaces."""
    require(__name__, INTERNALS)


class XorMasker:
    """autobahn's masker interface (``pointer``, ``reset``, ``process``) over ``websockets``' ``apply_mask``.

    ``process`` may be given a frame's payload in several pieces; the mask
    is rotated to where the previous piece ended.
    """

    __slots__ = ("_mask", "_ptr")

    def __init__(self, mask: bytes) -> None:
        self._mask = bytes(mask)
        self._ptr = 0

    def pointer(self) -> int:
        return self._ptr

    def reset(self) -> None:
        self._ptr = 0

    def process(self, data: bytes) -> bytes:
        offset = self._ptr & 3
        mask = self._mask if not offset else self._mask[offset:] + self._mask[:offset]
        self._ptr += len(data)
        return apply_mask(data, mask)


def create_xor_masker(mask: bytes, length: int | None = None) -> XorMasker:
    """autobahn's ``create_xor_masker`` signature; the length is not needed to unmask."""
    return XorMasker(mask)


def use_fast_unmasking() -> None:
    """Make autobahn's WebSocket protocol (in this process) unmask frames with :class:`XorMasker`."""
    autobahn.websocket.protocol.create_xor_masker = create_xor_masker  # type: ignore[attr-defined]
