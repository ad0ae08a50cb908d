"""The server's patches against the installed daphne, autobahn and Twisted: every internal they rely on is there.

When one of these fails after an upgrade, read the failing patch module's
docstring: it says why the patch exists and when it can go.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from platform_core.server import assembly, closing, coalescing, lean_http, send_frame, unmasking
from platform_core.server.internals import (
    TESTED_RANGES,
    Attribute,
    IncompatibleDependency,
    Listed,
    Mentioned,
    Parameter,
)

PATCHES = (closing, send_frame, unmasking, coalescing, lean_http, assembly)
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_the_installed_versions_are_the_tested_ones_and_pyproject_pins_them():
    pinned = {}
    for line in tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]:
        requirement = Requirement(line)
        pinned[requirement.name.lower()] = requirement.specifier
    for distribution, tested in TESTED_RANGES.items():
        assert str(pinned[distribution]) == str(Requirement(distribution + tested).specifier)
        assert pinned[distribution].contains(metadata.version(distribution)), distribution


@pytest.mark.parametrize("patch", PATCHES, ids=lambda patch: patch.__name__)
def test_every_internal_a_patch_relies_on_is_in_the_installed_versions(patch):
    assert patch.INTERNALS
    missing = [str(internal) for internal in patch.INTERNALS if not internal.present()]
    assert missing == []
    patch.check_internals()


def _without(monkeypatch, internal):
    """Make ``internal`` disappear from its dependency for the rest of the test."""
    if isinstance(internal, Attribute):
        owner = internal.owner
        definers = [owner]
        if isinstance(owner, type):  # a class loses it wherever it is defined, not only where it inherits it from
            definers = [klass for klass in owner.__mro__ if internal.name in vars(klass)]
        for definer in definers:
            monkeypatch.delattr(definer, internal.name)
    elif isinstance(internal, Mentioned):
        monkeypatch.setattr(internal.owner, internal.method, lambda *args, **kwargs: None)
    elif isinstance(internal, Listed):
        kept = [name for name in getattr(internal.owner, internal.collection) if name != internal.name]
        monkeypatch.setattr(internal.owner, internal.collection, kept)
    elif isinstance(internal, Parameter):
        monkeypatch.setattr(internal.owner, internal.method, lambda self, *args, other=None: None)
    else:
        raise TypeError(f"No way to remove {internal!r}")


@pytest.mark.parametrize(
    ("patch", "internal"),
    [(patch, internal) for patch in PATCHES for internal in patch.INTERNALS],
    ids=lambda value: value.__name__.rpartition(".")[2] if hasattr(value, "INTERNALS") else str(value),
)
def test_a_patch_refuses_to_run_without_an_internal_naming_it_and_the_tested_range(monkeypatch, patch, internal):
    _without(monkeypatch, internal)
    with pytest.raises(IncompatibleDependency) as raised:
        patch.check_internals()
    message = str(raised.value)
    assert patch.__name__ in message
    assert str(internal) in message
    assert f"{internal.distribution}{TESTED_RANGES[internal.distribution]}" in message


def test_the_checks_are_runtime_errors_that_name_the_installed_version(monkeypatch):
    import autobahn.websocket.protocol

    monkeypatch.delattr(autobahn.websocket.protocol, "create_xor_masker")
    with pytest.raises(RuntimeError, match=rf"autobahn {metadata.version('autobahn')} lacks .*create_xor_masker"):
        unmasking.check_internals()


def test_the_server_refuses_to_start_when_an_internal_is_missing(monkeypatch):
    from twisted.internet import abstract

    monkeypatch.delattr(abstract.FileDescriptor, "_writeDisconnected")
    with pytest.raises(IncompatibleDependency, match="_writeDisconnected"):
        assembly.PlatformServer(application=None, endpoints=["tcp:port=0:interface=127.0.0.1"])


def test_the_server_checks_every_patch(monkeypatch):
    checked = []
    for patch in (closing, send_frame, unmasking, coalescing, lean_http):
        monkeypatch.setattr(patch, "check_internals", lambda patch=patch: checked.append(patch))
    assembly.PlatformServer(application=None, endpoints=["tcp:port=0:interface=127.0.0.1"])
    assert set(checked) == {closing, send_frame, unmasking, coalescing, lean_http}
