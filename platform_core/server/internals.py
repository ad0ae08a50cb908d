"""What the server's patches need of daphne, autobahn and Twisted, checked before the server starts.

Each patch module lists the internals it relies on in ``INTERNALS`` and
offers ``check_internals()``, which raises :class:`IncompatibleDependency`
naming every one the installed versions lack. The server calls the checks
when it is constructed, so a dependency upgraded past the tested range stops
it at start-up instead of leaving a patch silently without effect.

An internal is one of:

- :class:`Attribute`: a class or module has an attribute (its own or inherited);
- :class:`Mentioned`: a method's code reads or sets a name, for an instance
  attribute that exists only once that method has run, a module global it
  looks up on every call, or a dictionary key;
- :class:`Listed`: a class-level list holds a name, such as the options
  autobahn copies from its factory onto each connection;
- :class:`Parameter`: a method takes a parameter of that name.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from inspect import signature

#: The versions the patches are tested with; kept equal to the pins in
#: pyproject.toml's ``[project] dependencies`` (a test compares them).
TESTED_RANGES = {
    "daphne": ">=4.2.2,<4.3",
    "autobahn": ">=26.10.2,<26.11",
    "twisted": ">=26.10.0,<26.11",
}


class IncompatibleDependency(RuntimeError):
    """An installed dependency lacks an internal that one of the server's patches relies on."""


def _qualname(owner: object) -> str:
    module = getattr(owner, "__module__", None)
    name = getattr(owner, "__qualname__", None) or getattr(owner, "__name__", repr(owner))
    return f"{module}.{name}" if module else name


@dataclass(frozen=True)
class Attribute:
    """``owner`` (a class or module) has the attribute ``name``, its own or inherited."""

    distribution: str
    owner: object
    name: str

    def present(self) -> bool:
        return hasattr(self.owner, self.name)

    def __str__(self) -> str:
        return f"{_qualname(self.owner)}.{self.name}"


@dataclass(frozen=True)
class Mentioned:
    """The code of ``owner.method`` reads or sets ``name`` (an attribute, a global or a string key)."""

    distribution: str
    owner: type
    method: str
    name: str

    def present(self) -> bool:
        code = getattr(getattr(self.owner, self.method, None), "__code__", None)
        return code is not None and (self.name in code.co_names or self.name in code.co_consts)

    def __str__(self) -> str:
        return f"{self.name!r} in {_qualname(self.owner)}.{self.method}"


@dataclass(frozen=True)
class Listed:
    """The class-level collection ``owner.collection`` holds ``name``."""

    distribution: str
    owner: type
    collection: str
    name: str

    def present(self) -> bool:
        return self.name in getattr(self.owner, self.collection, ())

    def __str__(self) -> str:
        return f"{self.name!r} in {_qualname(self.owner)}.{self.collection}"


@dataclass(frozen=True)
class Parameter:
    """``owner.method`` takes a parameter called ``name``."""

    distribution: str
    owner: type
    method: str
    name: str

    def present(self) -> bool:
        method = getattr(self.owner, self.method, None)
        try:
            return self.name in signature(method).parameters
        except (TypeError, ValueError):  # gone, or not a callable Python can describe
            return False

    def __str__(self) -> str:
        return f"parameter {self.name!r} of {_qualname(self.owner)}.{self.method}"


Internal = Attribute | Mentioned | Listed | Parameter


def _installed(distribution: str) -> str:
    try:
        return f"{distribution} {metadata.version(distribution)}"
    except metadata.PackageNotFoundError:
        return f"{distribution} (not installed)"


def require(patch: str, internals: Iterable[Internal]) -> None:
    """Raise :class:`IncompatibleDependency` naming each of ``internals`` that ``patch`` cannot find."""
    missing: dict[str, list[str]] = {}
    for internal in internals:
        if not internal.present():
            missing.setdefault(internal.distribution, []).append(str(internal))
    if not missing:
        return
    problems = "; ".join(
        f"{_installed(distribution)} lacks {', '.join(names)} "
        f"(the patch is tested with {distribution}{TESTED_RANGES[distribution]})"
        for distribution, names in missing.items()
    )
    raise IncompatibleDependency(
        f"The server's patch {patch} cannot work with the installed dependencies: {problems}. "
        "Install the versions pinned in pyproject.toml, or update the patch for the new release."
    )
