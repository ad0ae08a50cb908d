"""A process tree's CPU time, RSS and affinity, read from /proc for real processes."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench import procstats

BURN_S = 0.3
# Burns BURN_S of CPU, then sleeps: a child whose CPU time stays in the tree while it lives.
BURN_THEN_SLEEP = (
    "import time\n"
    f"end = time.process_time() + {BURN_S}\n"
    "while time.process_time() < end: pass\n"
    "time.sleep(60)\n"
)
# The same work in a child that exits at once: its time moves to the shell that reaps it.
BURN_THEN_EXIT = BURN_THEN_SLEEP.replace("time.sleep(60)", "pass")


@pytest.fixture
def shell() -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    """Yields a function starting ``sh -c SCRIPT``, and kills every shell it started (with its children)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(script: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(["sh", "-c", script], start_new_session=True)
        started.append(process)
        return process

    yield start
    for process in started:
        try:
            os.killpg(process.pid, 9)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not hold in time")
        time.sleep(0.05)


def comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as handle:
        return handle.read().strip()


def own_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_the_tree_holds_children_and_grandchildren(shell):
    parent = shell(f"{sys.executable} -c 'import time; time.sleep(60)' & wait")
    wait_for(lambda: len(procstats.process_tree(parent.pid)) == 2)

    tree = procstats.process_tree(parent.pid)
    assert tree[0] == parent.pid
    assert parent.pid in procstats.process_tree(os.getpid())
    assert tree[1] in procstats.process_tree(os.getpid())


def test_cpu_time_counts_a_live_child(shell):
    parent = shell(f"{sys.executable} -c '{BURN_THEN_SLEEP}' & wait")
    wait_for(lambda: procstats.tree_cpu_s(parent.pid) >= BURN_S)

    # The shell itself did next to nothing: the time is the child's.
    assert own_cpu_s(parent.pid) < 0.1
    assert len(procstats.process_tree(parent.pid)) == 2


def test_cpu_time_keeps_a_child_that_exited(shell):
    # exec: the shell becomes sleep, keeping its pid and the time of the child it reaped.
    parent = shell(f"{sys.executable} -c '{BURN_THEN_EXIT}'; exec sleep 60")
    wait_for(lambda: comm(parent.pid) == "sleep")

    assert procstats.process_tree(parent.pid) == [parent.pid]
    assert procstats.tree_cpu_s(parent.pid) >= BURN_S
    assert own_cpu_s(parent.pid) < 0.1


def test_cpu_time_of_a_process_that_is_gone_is_an_error(shell):
    process = shell("exit 0")
    process.wait(timeout=10)

    with pytest.raises(FileNotFoundError):
        procstats.tree_cpu_s(process.pid)


def python_child(parent_pid: int) -> int:
    """The shell's one child, once it runs Python: the shell forks, and the fork execs (taskset, then) Python;
    until then the child's command line is the shell's."""
    wait_for(lambda: len(procstats.process_tree(parent_pid)) == 2)
    child = procstats.process_tree(parent_pid)[1]
    wait_for(lambda: Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0] == sys.executable.encode())
    return child


def test_rss_adds_up_the_tree(shell):
    parent = shell(f"{sys.executable} -c 'import time; time.sleep(60)' & wait")
    child = python_child(parent.pid)
    # Right after exec the interpreter has mapped little; once started it holds several MiB.
    wait_for(lambda: procstats.tree_rss_mb(child) > 3.0)

    # A shell holds some memory of its own too: the sum holds both.
    assert procstats.tree_rss_mb(parent.pid) > procstats.tree_rss_mb(child)
    gone = shell("exit 0")
    gone.wait(timeout=10)
    assert math.isnan(procstats.tree_rss_mb(gone.pid))


def test_allowed_cpus_are_read_per_process(shell):
    cpu = min(os.sched_getaffinity(0))
    parent = shell(f"taskset -c {cpu} {sys.executable} -c 'import time; time.sleep(60)' & wait")
    child = python_child(parent.pid)

    allowed = procstats.tree_allowed_cpus(parent.pid)
    assert allowed[child] == [cpu]
    assert allowed[parent.pid] == sorted(os.sched_getaffinity(0))
