"""CPU lists, the pinning plan and its fallbacks, and a process really started under taskset."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from bench import pinning
from bench.pinning import Pinning, PinningError


@pytest.mark.parametrize(("text", "cpus"), [
    ("0", {0}), ("1", {1}), ("0,2", {0, 2}), ("2-4", {2, 3, 4}), (" 0, 3-4 ", {0, 3, 4}),
    ("none", None), ("None", None), ("", None),
])
def test_cpu_lists_parse_like_taskset(text, cpus):
    assert pinning.parse_cpu_list(text) == (None if cpus is None else frozenset(cpus))


@pytest.mark.parametrize("text", ["a", "1-", "3-1", "-1", "0,,1"])
def test_a_malformed_cpu_list_is_refused_with_a_sentence(text):
    with pytest.raises(PinningError, match="CPU"):
        pinning.parse_cpu_list(text)


def test_cpu_lists_format_back_as_ranges():
    assert pinning.format_cpu_list({0, 2, 3, 4, 7}) == "0,2-4,7"
    assert pinning.format_cpu_list(None) == "none"
    assert pinning.parse_cpu_list(pinning.format_cpu_list({1, 5, 6})) == {1, 5, 6}


def test_the_default_plan_gives_server_and_client_a_core_each():
    plan = pinning.plan("0", "1", available={0, 1})

    assert plan == Pinning(frozenset({0}), frozenset({1}), "")


def test_a_single_cpu_machine_runs_both_unpinned_with_a_warning():
    plan = pinning.plan("0", "1", available={0})

    assert plan.server_cpus is None and plan.client_cpus is None
    assert "only CPU 0 is available" in plan.warning
    assert "not pinned" in pinning.describe(plan.as_dict())


def test_cpus_this_process_may_not_use_are_refused():
    with pytest.raises(PinningError, match="client CPUs 5 are not all available.*may use 0-1"):
        pinning.plan("0", "5", available={0, 1})


def test_server_and_client_cpus_must_not_overlap():
    with pytest.raises(PinningError, match="overlap"):
        pinning.plan("0-1", "1", available={0, 1, 2})


def test_one_side_left_unpinned_is_said_so():
    plan = pinning.plan("0", "none", available={0, 1})

    assert plan.server_cpus == {0} and plan.client_cpus is None
    assert "client is not pinned" in plan.warning
    assert pinning.describe(plan.as_dict()).startswith("Server processes (with their children) ran on CPU 0, "
                                                       "the load generator unpinned.")


def test_the_recorded_plan_names_both_sides():
    recorded = pinning.plan("0", "1", available={0, 1}).as_dict()

    assert recorded["server_cpus"] == [0] and recorded["client_cpus"] == [1]
    assert recorded["warning"] is None
    assert pinning.describe(recorded) == ("Server processes (with their children) ran on CPU 0, "
                                          "the load generator on CPU 1.")


def test_a_command_under_taskset_keeps_its_pid_and_runs_on_the_cpus_given():
    cpu = max(os.sched_getaffinity(0))
    process = subprocess.Popen(pinning.under_taskset({cpu}, ["sleep", "30"]))
    try:
        # taskset execs the command once the affinity is set: Popen's pid becomes the command's.
        deadline = time.monotonic() + 10
        while Path(f"/proc/{process.pid}/comm").read_text().strip() != "sleep" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert Path(f"/proc/{process.pid}/comm").read_text().strip() == "sleep"
        assert os.sched_getaffinity(process.pid) == {cpu}
    finally:
        process.kill()
        process.wait()


def test_an_unpinned_command_is_left_as_it_is():
    assert pinning.under_taskset(None, ["sleep", "1"]) == ["sleep", "1"]
