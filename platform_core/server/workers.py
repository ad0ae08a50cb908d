"""Several serving processes on one port: ``python -m platform_core.server --workers N``.

One Python process serves on one core (its event loop); ``--workers N``
starts N of them (``auto``: one per core this process may run on). The
parent binds one listening socket per worker on the same port with
``SO_REUSEPORT`` and keeps them all; it hands each worker its own socket as
systemd's socket activation does (fd 3, ``LISTEN_FDS``), which daphne adopts
with its ``systemd:`` endpoint. Why this shape:

- one socket per worker, because the kernel then spreads new connections
  evenly over the workers by their addresses. With one socket shared by all,
  every idle worker wakes for a new connection and the first one accepts
  everything queued: a burst of connections (a load balancer opening its
  pool, clients reconnecting after a drain) all land on one worker;
- the parent holds the sockets, so a worker that dies loses no connection
  waiting in its queue: its replacement adopts the same socket and accepts
  them (they wait while it loads its models, with no error), and the port
  never has to be bound again;
- the parent binds, so bind errors (port in use, no permission) surface
  once, before any worker loads its models; ``-p 0`` gives every worker the
  same port. It first binds without ``SO_REUSEPORT``, so that it never
  silently shares a port with another server already on it.

Each worker is a full server of its own: its models, batchers, prediction
log writer and journal (``journal-<pid>-*``), its drain on SIGTERM. They
share the metrics through Prometheus's multiprocess mode: the parent sets
``PROMETHEUS_MULTIPROC_DIR`` (a directory of its own when the variable is
unset, removed at exit; the given one is emptied first), so ``/metrics`` on
any worker adds up every worker's numbers.

SIGTERM or SIGINT to the parent forwards SIGTERM to every worker, which
answers its requests in flight, closes its connections with 1001 and flushes
its log; the parent exits once all have. A second signal kills them. A worker
that exits while the server is not stopping is replaced (after a growing
pause if it keeps dying within seconds of its start), and the event is
logged and counted in ``platform_worker_restarts_total``. Workers run in
process groups of their own, so a terminal's Ctrl-C reaches the parent only,
and get SIGTERM if the parent dies.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("platform_core.server.workers")

#: How often the parent looks for workers that exited.
POLL_S = 0.2
#: A worker that dies sooner than this after its start is replaced after a pause, doubling up to the maximum.
MIN_UPTIME_S = 10.0
RESTART_PAUSE_MIN_S, RESTART_PAUSE_MAX_S = 0.5, 30.0
#: How long the parent waits for the workers' drain after SIGTERM before it kills them.
STOP_TIMEOUT_S = 300.0
# Pending connections the shared socket queues (the kernel caps it at net.core.somaxconn).
BACKLOG = 4096
PR_SET_PDEATHSIG = 1


class WorkerOptionError(Exception):
    """The command line asks for workers in a way the supervisor cannot serve."""


def usable_cores() -> int:
    """The cores this process may run on (taskset, cpusets), not the machine's count."""
    return len(os.sched_getaffinity(0))


def worker_count(value: str) -> int:
    if value == "auto":
        return usable_cores()
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--workers takes a number or 'auto', not {value!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"--workers must be at least 1, not {count}")
    return count


@dataclass(frozen=True)
class WorkerOptions:
    workers: int
    host: str
    port: int
    #: daphne's arguments for each worker, without the binding.
    daphne_args: list[str]


def add_argument(parser: argparse.ArgumentParser) -> None:
    """``--workers`` in daphne's ``--help``; :func:`supervise_or_pass` takes it off before daphne parses."""
    parser.add_argument(
        "--workers", default=None, metavar="N",
        help="Serve with N processes on the port (a number, or 'auto': one per usable core; default 1)",
    )


def parse(argv: Sequence[str]) -> tuple[WorkerOptions | None, list[str]]:
    """Split ``--workers`` off daphne's arguments: (options when more than one worker, daphne's arguments)."""
    parser = argparse.ArgumentParser(prog="python -m platform_core.server", add_help=False, allow_abbrev=False)
    parser.add_argument("--workers", type=worker_count, default=None)
    known, rest = parser.parse_known_args(list(argv))
    if known.workers is None or known.workers == 1:
        return None, rest
    binding = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    binding.add_argument("-b", "--bind", dest="host", default="127.0.0.1")
    binding.add_argument("-p", "--port", type=int, default=8000)
    for flag in ("-u", "--unix-socket", "--fd", "-e", "--endpoint"):
        binding.add_argument(flag, dest=f"unsupported_{flag.strip('-').replace('-', '_')}", default=None)
    bound, daphne_args = binding.parse_known_args(rest)
    other = [name for name, value in vars(bound).items() if name.startswith("unsupported_") and value is not None]
    if other:
        raise WorkerOptionError("--workers serves a TCP port given with -b/-p; it cannot share a unix socket, "
                                "a file descriptor or endpoint strings among workers.")
    return WorkerOptions(known.workers, bound.host, bound.port, daphne_args), rest


def bind(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` listening sockets on one port, one per worker; OSError if the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    address = host.strip("[]")
    # Without SO_REUSEPORT first: fails if anything listens there, and picks the port for -p 0.
    with socket.create_server((address, port), family=family) as probe:
        port = probe.getsockname()[1]
    return [socket.create_server((address, port), family=family, backlog=BACKLOG, reuse_port=True)
            for _ in range(count)]


#: Where a worker finds the socket: the first descriptor of systemd's socket-activation protocol.
LISTEN_FD = 3


def _become_worker(parent_pid: int, listener_fd: int, environment: dict[str, str]) -> None:
    """Called in each worker between fork and exec: the socket at fd 3 as systemd hands it, SIGTERM with the parent.

    daphne's ``--fd`` endpoint is gone from Twisted; its ``systemd:`` endpoint
    adopts fd 3 when ``LISTEN_PID`` names the process, which only the child knows.
    """
    if listener_fd == LISTEN_FD:
        os.set_inheritable(LISTEN_FD, True)
    else:
        os.dup2(listener_fd, LISTEN_FD)  # inheritable; the original closes at exec
    os.environ.update(environment, LISTEN_FDS="1", LISTEN_FDNAMES="http", LISTEN_PID=str(os.getpid()))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class Worker:
    index: int
    #: Its socket, kept by the parent for the worker's replacements.
    listener: socket.socket
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    #: Deaths in a row, each within MIN_UPTIME_S of its start.
    quick_deaths: int = 0
    restart_at: float | None = None


class Supervisor:
    """Starts the workers on their sockets, replaces those that die, and stops them all on SIGTERM or SIGINT."""

    def __init__(self, options: WorkerOptions, listeners: list[socket.socket], *, metrics_dir: str) -> None:
        self.options = options
        self.metrics_dir = metrics_dir
        family = "INET6" if listeners[0].family == socket.AF_INET6 else "INET"
        self.command = [sys.executable, "-m", "platform_core.server",
                        "-e", f"systemd:domain={family}:index=0", *options.daphne_args]
        self.workers = [Worker(index, listener) for index, listener in enumerate(listeners)]
        self._stop = threading.Event()
        self._signals = 0

    # -- signals ---------------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals += 1
        if self._signals == 1:
            logger.info("Received %s: draining %d workers", signal.Signals(signum).name, len(self.workers))
        else:
            logger.warning("Received %s again: killing the workers", signal.Signals(signum).name)
            self._send_all(signal.SIGKILL)
        self._stop.set()

    # -- workers ---------------------------------------------------------------------------------

    def _start(self, worker: Worker) -> None:
        environment = {"PROMETHEUS_MULTIPROC_DIR": self.metrics_dir, "PLATFORM_WORKER_INDEX": str(worker.index)}
        parent, fd = os.getpid(), worker.listener.fileno()
        # close_fds=False: Python opens every descriptor close-on-exec, and the
        # socket must reach fd 3, which pass_fds cannot name when it is not open here.
        worker.process = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, close_fds=False, process_group=0,
            preexec_fn=lambda: _become_worker(parent, fd, environment),
        )
        worker.started = time.monotonic()
        worker.restart_at = None
        logger.info("Worker %d started (pid %d)", worker.index, worker.process.pid)

    def _exited(self, worker: Worker, pid: int, status: int) -> None:
        """Called when a worker exits while the server is not stopping."""
        # Imported once PROMETHEUS_MULTIPROC_DIR is set (supervise), never before.
        from prometheus_client import multiprocess

        from monitoring.deployment_metrics import WORKER_RESTARTS

        multiprocess.mark_process_dead(pid, self.metrics_dir)
        lived_s = time.monotonic() - worker.started
        worker.quick_deaths = worker.quick_deaths + 1 if lived_s < MIN_UPTIME_S else 0
        pause_s = 0.0
        if worker.quick_deaths:
            pause_s = min(RESTART_PAUSE_MAX_S, RESTART_PAUSE_MIN_S * 2 ** (worker.quick_deaths - 1))
        cause = "signal" if status < 0 else "exit"
        how = f"was killed by {signal.Signals(-status).name}" if status < 0 else f"exited with status {status}"
        logger.error("Worker %d (pid %d) %s after %.1f s; starting a replacement in %.1f s",
                     worker.index, pid, how, lived_s, pause_s)
        WORKER_RESTARTS.labels(cause=cause).inc()
        worker.process = None
        worker.restart_at = time.monotonic() + pause_s

    def _check(self) -> None:
        now = time.monotonic()
        for worker in self.workers:
            if worker.process is not None:
                status = worker.process.poll()
                if status is not None and not self._stop.is_set():
                    self._exited(worker, worker.process.pid, status)
            if worker.process is None and worker.restart_at is not None and now >= worker.restart_at:
                self._start(worker)

    def _send_all(self, signum: int) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                try:
                    worker.process.send_signal(signum)
                except ProcessLookupError:
                    pass

    def _drain(self) -> int:
        """SIGTERM to every worker, then wait for their drain; returns the exit status of the server."""
        for worker in self.workers:
            worker.listener.close()  # each worker keeps its copy until it stops listening
        self._send_all(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        status = 0
        for worker in self.workers:
            if worker.process is None:
                continue
            try:
                code = worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.error("Worker %d did not finish its drain within %.0f s; killing it",
                             worker.index, STOP_TIMEOUT_S)
                worker.process.kill()
                code = worker.process.wait()
            expected = {0, -signal.SIGTERM} | ({-signal.SIGKILL} if self._signals > 1 else set())
            if code not in expected:
                logger.warning("Worker %d exited with status %s", worker.index, code)
                status = 1
        logger.info("All workers stopped")
        return status

    def run(self) -> int:
        previous = {signum: signal.signal(signum, self._on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            host, port = self.workers[0].listener.getsockname()[:2]
            logger.info("Serving on %s:%d with %d workers (metrics in %s)", host, port, len(self.workers),
                        self.metrics_dir)
            for worker in self.workers:
                self._start(worker)
            while not self._stop.is_set():
                self._stop.wait(POLL_S)
                self._check()
            return self._drain()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def prepare_metrics_dir() -> tuple[str, bool]:
    """The multiprocess directory (given and emptied, or made here); True when the caller must remove it."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):  # an earlier deployment's numbers must not add to this one's
            stale.unlink()
        return str(path), False
    return tempfile.mkdtemp(prefix="platform-metrics-"), True


def supervise(options: WorkerOptions) -> int:
    """Serve with ``options.workers`` processes until SIGTERM or SIGINT; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)-15s %(levelname)-8s %(message)s")
    try:
        listeners = bind(options.host, options.port, options.workers)
    except OSError as exc:
        logger.error("Could not listen on %s:%d: %s", options.host, options.port, exc)
        return 1
    metrics_dir, owned = prepare_metrics_dir()
    # prometheus_client reads the variable when it is first imported, which happens after this line.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        return Supervisor(options, listeners, metrics_dir=metrics_dir).run()
    finally:
        for listener in listeners:
            listener.close()
        if owned:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def supervise_or_pass(argv: Sequence[str]) -> list[str]:
    """Supervise and exit when ``argv`` asks for several workers; else daphne's arguments, ``--workers`` removed."""
    try:
        options, daphne_args = parse(argv)
    except (WorkerOptionError, argparse.ArgumentTypeError) as exc:
        sys.exit(f"python -m platform_core.server: error: {exc}")
    if options is None:
        return daphne_args
    sys.exit(supervise(options))
