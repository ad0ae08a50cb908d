"""Waiting for and stopping the processes the tests start, and the error raised when one cannot be had."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from bench.servers import tail


class ServiceUnavailable(Exception):
    """A real service the tests need could be neither reused nor started."""


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout_s: float,
    what: str,
    process: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
    interval_s: float = 0.1,
) -> None:
    """Poll ``ready`` until it returns true; raise if ``process`` exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        if ready():
            return
        if process is not None and process.poll() is not None:
            raise ServiceUnavailable(
                f"{what} exited with status {process.returncode} before it was ready."
                + (f" The end of its log ({log}):\n{tail(log)}" if log else "")
            )
        if time.monotonic() >= deadline:
            raise ServiceUnavailable(
                f"{what} was not ready after {timeout_s:.0f} s."
                + (f" The end of its log ({log}):\n{tail(log)}" if log else "")
            )
        time.sleep(interval_s)


def stop_process(process: subprocess.Popen[bytes], *, grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if the process has not exited after ``grace_s``."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=grace_s)
