"""What a process and its descendants use, read from /proc: CPU time, resident memory, allowed CPUs.

A server is measured as a tree: the platform's daphne process and its
children (the prediction log's writer process), found through
``/proc/<pid>/task/<tid>/children``. The load generator's processes are not
descendants of a server, so they are never counted with it.
"""

from __future__ import annotations

import math
import os


def process_tree(pid: int) -> list[int]:
    """``pid`` followed by its live descendants, parents before children."""
    found, index = [pid], 0
    while index < len(found):
        current = found[index]
        index += 1
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    found.extend(int(child) for child in handle.read().split())
            except FileNotFoundError:
                continue
    return found


def tree_cpu_s(pid: int) -> float:
    """CPU seconds used by ``pid`` and its descendants, from /proc; raises if ``pid`` itself is gone.

    Each process counts its own user and system time and that of the
    children it has reaped, so a child that exits between two readings (a
    log writer being replaced) does not take its CPU time away with it.
    """
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/stat") as handle:
                # The command name may hold spaces and parentheses: split after its closing one.
                fields = handle.read().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            if member == pid:
                raise
            continue  # a child that exited meanwhile
        # utime, stime, cutime, cstime are fields 14-17 of proc_pid_stat(5); fields[0] here is field 3.
        total += sum(int(value) for value in fields[11:15]) / ticks_per_s
    return total


def tree_rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` and its live descendants in MiB, from /proc; NaN if ``pid`` is gone."""
    total_kib = 0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total_kib += int(line.split()[1])
                        break
        except (FileNotFoundError, ProcessLookupError):
            if member == pid:
                return math.nan
    return total_kib / 1024.0


def tree_allowed_cpus(pid: int) -> dict[int, list[int]]:
    """The CPUs each process of the tree may run on (its ``Cpus_allowed_list``), by pid."""
    allowed: dict[int, list[int]] = {}
    for member in process_tree(pid):
        try:
            allowed[member] = sorted(os.sched_getaffinity(member))
        except (ProcessLookupError, PermissionError):
            continue
    return allowed
