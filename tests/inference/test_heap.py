"""After a model load, the heap's free pages go back to the operating system."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading

import pytest

from inference import heap


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None,
                    reason="malloc_trim is glibc's; this test reads /proc")
def test_memory_freed_in_a_loader_thread_leaves_the_process():
    # 40 MiB allocated in another thread, all but one block in fifty freed: the survivors pin the arena, so
    # glibc cannot shrink it by itself, though nearly all of its pages are free.
    survivors: list[bytearray] = []

    def churn() -> None:
        blocks = [bytearray(4000) for _ in range(10_000)]
        survivors.extend(blocks[::50])
        del blocks

    before = _rss_mib()
    worker = threading.Thread(target=churn)
    worker.start()
    worker.join()
    kept = _rss_mib() - before

    assert heap.release_free_heap() is True
    assert kept > 20, kept  # what the test is about: most of the 40 MiB still counted
    assert _rss_mib() - before < kept / 2, (before, kept, _rss_mib())
    survivors.clear()


def test_without_malloc_trim_it_does_nothing(monkeypatch):
    monkeypatch.setattr(heap, "_malloc_trim", None)

    assert heap.release_free_heap() is False
