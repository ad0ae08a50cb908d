"""Waiting in asyncio until an exact time, to tens of microseconds, without keeping the CPU busy.

asyncio's timers wake through ``epoll_wait``, whose timeout is in whole
milliseconds (rounded up): an open loop sending every 200 µs would send most
requests up to a millisecond late, a lag its latencies would include. Polling
the loop instead keeps the client's core busy, and where that core is shared
the scheduler then runs the poller last. Linux's ``timerfd`` wakes ``epoll``
at a nanosecond-resolution absolute time: :class:`Waker` arms one per wait
and the loop watches its file descriptor. Elsewhere (no ``timerfd``) it falls
back to ``asyncio.sleep``, and the send lag an open loop reports shows it.

:data:`clock` is the clock the timer runs on (``CLOCK_MONOTONIC``).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import time

clock = time.monotonic

_CLOCK_MONOTONIC = 1
_TFD_TIMER_ABSTIME = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class Waker:
    """``await waker.until(at)``: resumes at ``at`` (a :data:`clock` time), by timerfd where there is one."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.fd = -1
        self._waiter: asyncio.Future[None] | None = None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            self._settime = libc.timerfd_settime
            self.fd = libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        except (OSError, AttributeError):
            return
        if self.fd >= 0:
            loop.add_reader(self.fd, self._fired)

    @property
    def precise(self) -> bool:
        """Whether waits end by timerfd (else by asyncio's millisecond timers)."""
        return self.fd >= 0

    async def until(self, at: float) -> None:
        if not self.precise:
            await asyncio.sleep(max(0.0, at - clock()))
            return
        seconds = int(at)
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(seconds, int((at - seconds) * 1e9)))
        if self._settime(self.fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"timerfd_settime failed: {os.strerror(error)}")
        self._waiter = self.loop.create_future()
        await self._waiter

    def _fired(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:  # disarmed and re-armed before the loop read it
            return
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def close(self) -> None:
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
