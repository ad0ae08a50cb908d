"""Where a server's time goes under load: py-spy recordings and a summary of their hottest functions.

The server's Python code runs one thread at a time, so the summary comes from
a ``--gil`` recording: each sample is taken from whichever thread holds the
GIL, and a function's share of the samples is its share of the interpreter's
time. A thread's samples divided by (rate x seconds) is the fraction of wall
time it held the GIL; the total is at most 1. Native work done with the GIL
released (SQLite stepping, most of numpy and TensorFlow) is not in it; the
flame graph, recorded without ``--gil``, shows every thread that was running.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Collection
from pathlib import Path
from typing import Any

from .loadgen import LoadResult, LoadSpec, run_load

# Samples per second: enough for a stable top-20 in a few seconds, little
# enough that pausing the process for each sample barely slows it.
SAMPLE_RATE_HZ = 100
_LINE_NUMBER = re.compile(r":\d+\)$")
_THREAD_NUMBER = re.compile(r"[_-]\d+$")
ROOT_SHARE = 0.8


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return found if Path(found).exists() else None


def _frame(frame: str) -> str:
    # "send (channels/generic/websocket.py:83)" -> "send (channels/generic/websocket.py)": count a
    # function once, whatever line it was on.
    return _LINE_NUMBER.sub(")", frame.strip())


def summarize_raw(path: Path, top: int = 25) -> dict[str, Any]:
    """Per-thread shares, and the top functions by own and by inclusive samples, of a ``--format raw`` file."""
    threads: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    own_by_thread: dict[str, Counter[str]] = defaultdict(Counter)
    inclusive_by_thread: dict[str, Counter[str]] = defaultdict(Counter)
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = "all"
        if frames[0].startswith("thread ("):
            # "thread (3060): MainThread" -> "MainThread"; executor threads share a name prefix.
            thread = _THREAD_NUMBER.sub("", frames[0].partition("): ")[2]) or frames[0]
            frames = frames[1:]
        total += count
        functions = [_frame(f) for f in frames if f]
        if not functions:
            continue
        threads[thread] += count
        own[functions[-1]] += count
        own_by_thread[thread][functions[-1]] += count
        for function in set(functions):
            inclusive[function] += count
            inclusive_by_thread[thread][function] += count

    # Frames on (nearly) every stack of their threads -- the reactor's run loop, a
    # thread's bootstrap -- say nothing about where the time goes.
    thread_of: dict[str, set[str]] = defaultdict(set)
    for thread, counter in inclusive_by_thread.items():
        for function in counter:
            thread_of[function].add(thread)
    informative = Counter({
        function: samples for function, samples in inclusive.items()
        if samples < ROOT_SHARE * sum(threads[t] for t in thread_of[function])
    })

    def share(counter: Counter[str], n: int) -> list[dict[str, Any]]:
        return [
            {"function": name, "samples": samples, "percent": round(100.0 * samples / total, 1)}
            for name, samples in counter.most_common(n)
        ] if total else []

    return {
        "samples": total,
        "threads": share(threads, 10),
        "top_own": share(own, top),
        "top_inclusive": share(informative, top),
        "top_own_by_thread": {name: share(counter, 10) for name, counter in own_by_thread.items()},
    }


def profile_files(out_dir: Path, stem: str) -> dict[str, Path]:
    """Where a profile's files go: raw stacks, flame graph, one stack dump, the top functions."""
    return {
        "raw": out_dir / f"{stem}.txt",
        "svg": out_dir / f"{stem}.svg",
        "dump": out_dir / f"{stem}-dump.txt",
        "top": out_dir / f"{stem}-top.txt",
    }


def profile_under_load(
    spec: LoadSpec, pid: int, out_dir: Path, stem: str, *, record_s: float,
    client_cpus: Collection[int] | None = None,
) -> tuple[LoadResult, dict[str, Any]]:
    """Run ``spec`` against ``pid`` while py-spy records it twice: raw stacks, then a flame graph.

    ``spec`` should last at least ``2 * record_s`` after its warm-up; the
    load's own figures are returned too, but they include py-spy's overhead.
    Files are named after ``stem`` (see ``profile_files``); ``client_cpus``
    is passed on to ``run_load``. py-spy runs wherever this process may.
    """
    binary = py_spy()
    if binary is None:
        raise FileNotFoundError("py-spy is not installed in this environment; pip install py-spy.")
    files = profile_files(out_dir, stem)
    raw, svg, dump = files["raw"], files["svg"], files["dump"]
    errors: list[str] = []

    def record() -> None:
        time.sleep(spec.warmup_s + 1.0)
        common = ["--pid", str(pid), "--rate", str(SAMPLE_RATE_HZ), "--duration", str(int(record_s))]
        for args in (["--format", "raw", "--gil", "--threads", "-o", str(raw)],
                     ["--format", "flamegraph", "--threads", "-o", str(svg)]):
            result = subprocess.run([binary, "record", *common, *args], capture_output=True, text=True)
            if result.returncode != 0:
                errors.append(result.stderr[-2000:])
        result = subprocess.run([binary, "dump", "--pid", str(pid)], capture_output=True, text=True)
        dump.write_text(result.stdout if result.returncode == 0 else result.stderr)

    recorder = threading.Thread(target=record, name="py-spy")
    recorder.start()
    try:
        load = run_load(spec, server_pid=pid, client_cpus=client_cpus)
    finally:
        recorder.join()
    if errors or not raw.exists():
        raise RuntimeError("py-spy failed: " + " | ".join(errors))
    summary = summarize_raw(raw)
    summary.update(files=[p.name for p in (raw, svg, dump, files["top"])], rate_hz=SAMPLE_RATE_HZ,
                   seconds=record_s)
    files["top"].write_text(format_top(summary, 25))
    return load, summary


def format_top(summary: dict[str, Any], n: int = 15) -> str:
    """A plain-text table of a profile summary."""
    lines = [f"{summary['samples']} samples at {summary.get('rate_hz', '?')} Hz", "", "Threads:"]
    lines += [f"  {t['percent']:5.1f}%  {t['function']}" for t in summary["threads"]]
    lines += ["", "Top functions by own time (leaf frames):"]
    lines += [f"  {t['percent']:5.1f}%  {t['function']}" for t in summary["top_own"][:n]]
    lines += ["", "Top functions by inclusive time (frames on nearly every stack of their thread left out):"]
    lines += [f"  {t['percent']:5.1f}%  {t['function']}" for t in summary["top_inclusive"][:n]]
    return "\n".join(lines) + "\n"
