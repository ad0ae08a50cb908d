"""Which CPUs the servers and the load generator run on.

The benchmark's method: the server under test gets its own core(s) and the
load generator the other(s), so the client's work never competes with the
server's and every server, the platform and the reference servers alike, is
measured on the same cores in the same run. Servers are started under
``taskset -c <server cpus>``, which their children (the platform's log writer
process) inherit; the load generator's processes set their own affinity with
``os.sched_setaffinity``.

CPU lists use taskset's syntax: ``0``, ``0,2``, ``2-3``. ``none`` (or an empty
list) leaves that side unpinned. A machine that lets this process run on a
single CPU cannot separate the two: pinning is then switched off with a
warning, and the results say so.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

DEFAULT_SERVER_CPUS = "0"
DEFAULT_CLIENT_CPUS = "1"
_UNPINNED = ("", "none")


class PinningError(Exception):
    """The CPUs asked for cannot be given to the servers and the load generator."""


def parse_cpu_list(text: str) -> frozenset[int] | None:
    """``"0,2-3"`` -> {0, 2, 3}; ``"none"`` or ``""`` -> None (not pinned)."""
    text = text.strip()
    if text.lower() in _UNPINNED:
        return None
    cpus: set[int] = set()
    for item in text.split(","):
        first, dash, last = item.strip().partition("-")
        try:
            low, high = int(first), int(last if dash else first)
        except ValueError:
            raise PinningError(f"{text!r} is not a CPU list: use numbers and ranges such as 0,2-3, or none.") from None
        if low < 0 or high < low:
            raise PinningError(f"{item.strip()!r} in {text!r} is not a valid CPU range.")
        cpus.update(range(low, high + 1))
    return frozenset(cpus)


def format_cpu_list(cpus: Iterable[int] | None) -> str:
    """{0, 2, 3} -> ``"0,2-3"``; None -> ``"none"``."""
    if cpus is None:
        return "none"
    ranges: list[list[int]] = []
    for cpu in sorted(cpus):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in ranges)


def under_taskset(cpus: Collection[int] | None, command: list[str]) -> list[str]:
    """``command`` run under ``taskset -c <cpus>``, or ``command`` itself when ``cpus`` is None.

    taskset sets the affinity and then execs the command, so the process
    keeps the pid ``Popen`` reports.
    """
    if cpus is None:
        return command
    return ["taskset", "-c", format_cpu_list(cpus), *command]


def pin_current_process(cpus: Collection[int] | None) -> None:
    """Restrict this process (and whatever it starts from now on) to ``cpus``; nothing when None."""
    if cpus is not None:
        os.sched_setaffinity(0, cpus)


@dataclass(frozen=True)
class Pinning:
    """The CPUs servers and load generator are given; None for a side left unpinned."""

    server_cpus: frozenset[int] | None
    client_cpus: frozenset[int] | None
    #: Why pinning is partly or wholly off, for the warning and the results; empty when it is on.
    warning: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "server_cpus": None if self.server_cpus is None else sorted(self.server_cpus),
            "client_cpus": None if self.client_cpus is None else sorted(self.client_cpus),
            "method": "server under taskset -c, client processes by sched_setaffinity",
            "available_cpus": sorted(os.sched_getaffinity(0)),
            "warning": self.warning or None,
        }


def plan(server: str, client: str, available: Collection[int] | None = None) -> Pinning:
    """The pinning asked for by ``--server-cpus`` and ``--client-cpus``, checked against this machine.

    Raises ``PinningError`` with a sentence to show the user when a list names
    a CPU this process may not use, the two overlap, or taskset is missing.
    """
    server_cpus, client_cpus = parse_cpu_list(server), parse_cpu_list(client)
    usable = frozenset(os.sched_getaffinity(0) if available is None else available)
    if server_cpus is None and client_cpus is None:
        return Pinning(None, None, "both CPU lists were none, so server and client shared the machine's CPUs.")
    if len(usable) < 2:
        return Pinning(None, None, f"only CPU {format_cpu_list(usable)} is available, so server and client "
                                   "could not have cores of their own and shared it.")
    for side, cpus in (("server", server_cpus), ("client", client_cpus)):
        if cpus is not None and not cpus <= usable:
            raise PinningError(f"The {side} CPUs {format_cpu_list(cpus)} are not all available to this process; "
                             f"it may use {format_cpu_list(usable)}.")
    if server_cpus is not None and client_cpus is not None and server_cpus & client_cpus:
        raise PinningError(f"The server CPUs {format_cpu_list(server_cpus)} and the client CPUs "
                         f"{format_cpu_list(client_cpus)} overlap; give each its own.")
    if server_cpus is not None and shutil.which("taskset") is None:
        raise PinningError("taskset (util-linux) is not installed, so servers cannot be pinned: install it, "
                         "or pass --server-cpus none.")
    unpinned = [side for side, cpus in (("server", server_cpus), ("client", client_cpus)) if cpus is None]
    warning = f"the {unpinned[0]} is not pinned and may run on any CPU." if unpinned else ""
    return Pinning(server_cpus, client_cpus, warning)


def describe(pinning: dict[str, Any] | None) -> str:
    """One sentence for a report, from ``Pinning.as_dict()`` as recorded in the results."""
    if not pinning:
        return "Server and client were not pinned: they shared the machine's cores."
    server, client = pinning["server_cpus"], pinning["client_cpus"]
    if server is None and client is None:
        return f"Server and client were not pinned: {pinning['warning']}"

    def where(cpus: list[int] | None) -> str:
        return "unpinned" if cpus is None else f"on CPU {format_cpu_list(cpus)}"

    sentence = f"Server processes (with their children) ran {where(server)}, the load generator {where(client)}."
    if pinning.get("warning"):
        sentence += f" Note: {pinning['warning']}"
    return sentence
