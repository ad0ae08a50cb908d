"""The platform's daphne: its unmasking of client frames."""

from __future__ import annotations

import os

import pytest
from autobahn.websocket import xormasker

from platform_core import server


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 60, 127, 128, 1000, 70_000])
def test_frames_unmask_as_autobahn_unmasks_them_whole_or_in_pieces(size):
    mask, payload = os.urandom(4), os.urandom(size)
    expected = xormasker.create_xor_masker(mask, size).process(payload)
    assert server.XorMasker(mask).process(payload) == expected
    # A frame that arrives in pieces: the mask carries on where the last piece stopped.
    masker = server.XorMasker(mask)
    cuts = sorted({0, size, *(n * 7 % (size + 1) for n in range(1, 6))})
    pieces = [masker.process(payload[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)]
    assert b"".join(pieces) == expected
    assert masker.pointer() == size
    masker.reset()
    assert masker.pointer() == 0 and masker.process(payload) == expected


def test_the_server_makes_autobahn_use_it(monkeypatch):
    import autobahn.websocket.protocol as protocol

    monkeypatch.setattr(protocol, "create_xor_masker", protocol.create_xor_masker)
    server.use_fast_unmasking()
    assert protocol.create_xor_masker is server.create_xor_masker
    assert isinstance(protocol.create_xor_masker(b"abcd", 10), server.XorMasker)
