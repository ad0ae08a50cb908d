"""Running a load: the client processes started, released together, collected; the server measured meanwhile."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Collection
from typing import Any

from .. import procstats
from .client import Job, WorkerResult, worker_main
from .results import LoadResult, ServerFigures, aggregate
from .spec import LoadError, LoadSpec, clock


def run_load(spec: LoadSpec, *, server_pid: int | None = None,
             client_cpus: Collection[int] | None = None) -> LoadResult:
    """Run one load to completion and return every request's outcome.

    ``server_pid``, when given, is the server process whose CPU time over the
    measurement window (with its descendants', such as the platform's log
    writer process) and RSS and CPU affinity at its end are reported.
    ``client_cpus``, when given, are the CPUs the client processes are pinned
    to.
    """
    spec.check()
    cpus = None if client_cpus is None else frozenset(client_cpus)
    context = multiprocessing.get_context("spawn")
    jobs = [
        Job(spec, p, list(range(p, spec.connections, spec.processes)), cpus) for p in range(spec.processes)
    ]
    processes = []
    pipes = []
    for job in jobs:
        parent_end, child_end = context.Pipe()
        process = context.Process(target=worker_main, args=(job, child_end), daemon=True,
                                  name=f"loadgen-{job.process_index}")
        process.start()
        child_end.close()
        processes.append(process)
        pipes.append(parent_end)
    server = None
    try:
        for pipe in pipes:
            kind, payload = _receive(pipe, spec.connect_timeout_s + 60.0)
            if kind != "connected":
                raise LoadError(f"A client process could not connect to {spec.url}: {payload}")
        start = clock() + 0.25
        for pipe in pipes:
            pipe.send(start)
        if server_pid is not None:
            server = _measure_server(server_pid, start + spec.warmup_s, start + spec.warmup_s + spec.duration_s)
        results: list[WorkerResult] = []
        timeout = spec.warmup_s + spec.duration_s + spec.drain_timeout_s + 60.0
        for pipe in pipes:
            kind, payload = _receive(pipe, timeout)
            if kind != "result":
                raise LoadError(f"A client process failed: {payload}")
            results.append(payload)
    finally:
        for pipe in pipes:
            pipe.close()
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    return aggregate(spec, start, results, server)


def _measure_server(pid: int, begin: float, end: float) -> ServerFigures:
    """The server's CPU time between ``begin`` and ``end`` (clock times), then its RSS and CPU affinity."""
    time.sleep(max(0.0, begin - clock()))
    cpu_begin = procstats.tree_cpu_s(pid)
    time.sleep(max(0.0, end - clock()))
    cpu_s = procstats.tree_cpu_s(pid) - cpu_begin
    allowed = procstats.tree_allowed_cpus(pid)
    return ServerFigures(
        cpu_s=cpu_s,
        rss_mb=procstats.tree_rss_mb(pid),
        cpus=sorted({cpu for cpus in allowed.values() for cpu in cpus}),
        processes=len(allowed),
    )


def _receive(pipe: Any, timeout_s: float) -> tuple[str, Any]:
    if not pipe.poll(timeout_s):
        raise LoadError(f"A client process did not answer within {timeout_s:.0f} s.")
    try:
        return pipe.recv()
    except EOFError:
        raise LoadError("A client process exited without a result.") from None
