"""The command line of ``--workers``: what the supervisor takes for itself and what each worker gets."""

from __future__ import annotations

import os

import pytest

from platform_core.server import workers


def test_one_worker_is_plain_daphne_without_the_option():
    options, rest = workers.parse(["--workers", "1", "-b", "0.0.0.0", "-p", "9000", "app:application"])
    assert options is None
    assert rest == ["-b", "0.0.0.0", "-p", "9000", "app:application"]


def test_no_option_leaves_the_arguments_alone():
    assert workers.parse(["-p", "9000", "--verbosity", "2", "app"]) == (None, ["-p", "9000", "--verbosity", "2", "app"])


def test_several_workers_take_the_binding_and_pass_the_rest():
    options, _ = workers.parse(["--workers=3", "-b", "10.0.0.5", "--port", "9000", "--proxy-headers", "app"])
    assert options == workers.WorkerOptions(3, "10.0.0.5", 9000, ["--proxy-headers", "app"])


def test_auto_is_the_usable_cores():
    options, _ = workers.parse(["--workers", "auto", "app"])
    cores = len(os.sched_getaffinity(0))
    if cores == 1:
        assert options is None
    else:
        assert options is not None and options.workers == cores


@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_a_bad_count_is_refused(value, capsys):
    with pytest.raises(SystemExit):
        workers.parse(["--workers", value, "app"])
    assert "--workers" in capsys.readouterr().err


@pytest.mark.parametrize("binding", [["-u", "/tmp/s.sock"], ["--fd", "5"], ["-e", "tcp:9000"]])
def test_other_bindings_are_refused_with_several_workers(binding):
    with pytest.raises(workers.WorkerOptionError, match="-b/-p"):
        workers.parse(["--workers", "2", *binding, "app"])


def test_the_given_metrics_directory_is_emptied(tmp_path, monkeypatch):
    (tmp_path / "counter_123.db").write_bytes(b"old")
    (tmp_path / "keep.txt").write_text("not prometheus")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert workers.prepare_metrics_dir() == (str(tmp_path), False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["keep.txt"]


def test_without_a_metrics_directory_one_is_made(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    path, owned = workers.prepare_metrics_dir()
    try:
        assert owned and os.path.isdir(path) and not os.listdir(path)
    finally:
        os.rmdir(path)
