"""The writer process: a child of the server that inserts the prediction log's batches.

With ``PLATFORM_LOG_WRITER=process`` (the default for a file or server
database) the log's writer thread hands its batches, rows still raw, to
:class:`WriterProcess`, which implements ``inserter.RowInserter``. The child
(``python -m monitoring.predictionlog.writer_process``) materializes the rows
and runs an ``Inserter``, so that parsing, formatting and binding thousands
of parameters a second happen off the server's interpreter. The server keeps
the buffer, the spill files, the retries and the flush on shutdown; the child
only inserts what it is given and answers how many rows were new, or why it
could not.

The two talk over the child's stdin and a duplicate of its stdout in pickles
(both ends are this module, in processes of one deployment): batches, lists
of plain tuples in ``COLUMNS`` order, are pickled straight into the pipe, a
frame at a time, never built whole in the server's memory; answers are
small, length-prefixed so that the server can wait for one with a deadline.
The child exits when its stdin closes, which includes the server dying.
"""

from __future__ import annotations

import math
import os
import pickle
import select
import struct
import subprocess
import sys
import time
from typing import IO, Any

from django.db import DataError, OperationalError, connections

from .inserter import ROW_ERRORS, Inserter, record_table
from .rows import Row

_HEADER = struct.Struct("!I")


# -- the server's side ------------------------------------------------------------------


class WriterProcess:
    """The server's handle on its writer process: started when first needed, restarted after a failure.

    :meth:`insert` keeps ``RowInserter``'s contract: it returns how many rows
    were new, raises ``DataError`` when the database refused a row for what
    it holds and ``OperationalError`` for anything else (the database, or the
    process itself, failing), so the log's retries and spills work unchanged.
    """

    def __init__(self, *, using: str, db_timeout_s: float) -> None:
        self.using = using
        self.db_timeout_s = db_timeout_s
        # A statement may wait db_timeout_s for a lock; a batch is one statement
        # (two at most), and the process may need a few seconds to start.
        self.answer_timeout_s = max(30.0, 4 * db_timeout_s)
        self._process: subprocess.Popen[bytes] | None = None
        self._pipe: _PipeWriter | None = None  # the stdin of the process running
        self._table: tuple[str, tuple[str, ...]] | None = None

    def insert(self, rows: list[Row]) -> int:
        process = self._process
        if process is None or process.poll() is not None:
            process = self._start()
        assert process.stdout is not None and self._pipe is not None
        # Plain tuples: pickle writes those in C, where a NamedTuple costs a
        # Python call per row, on the server's interpreter.
        batch = [tuple(row) for row in rows]
        try:
            # Pickled straight into the pipe, a frame at a time: a batch built
            # as one bytes object held the GIL, and so the event loop, through
            # all of its copying and page faults.
            deadline = time.monotonic() + self.answer_timeout_s
            self._pipe.send(("insert", batch), deadline)
            answer = _receive(process.stdout.fileno(), deadline)
        except (OSError, EOFError, TimeoutError, pickle.PickleError, struct.error) as exc:
            self.stop()
            raise OperationalError(f"The prediction-log writer process failed: {exc}") from exc
        kind = answer[0]
        if kind == "ok":
            return answer[1]
        if kind == "row":
            raise DataError(answer[1])
        raise OperationalError(answer[1])

    def close(self) -> None:
        """After a failure: the process has dropped its connection already (it does on every error)."""

    def stop(self) -> None:
        """End the process: it finishes what it was given, then exits on the end of its input."""
        process, self._process = self._process, None
        self._pipe = None
        if process is None:
            return
        try:
            if process.stdin is not None:
                process.stdin.close()
            process.wait(timeout=self.answer_timeout_s)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()
        finally:
            if process.stdout is not None:
                process.stdout.close()

    def _start(self) -> subprocess.Popen[bytes]:
        from django.conf import settings

        if self._table is None:
            self._table = record_table()
        table, columns = self._table
        process = subprocess.Popen(
            [sys.executable, "-m", "monitoring.predictionlog.writer_process"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
            # Out of the server's process group: a Ctrl-C meant for the server
            # must not kill the writer under a graceful shutdown's last flush.
            start_new_session=True,
        )
        self._process = process
        assert process.stdin is not None
        self._pipe = _PipeWriter(process.stdin.fileno())
        try:
            self._pipe.send({
                "database": dict(connections[self.using].settings_dict),
                "use_tz": settings.USE_TZ,
                "time_zone": settings.TIME_ZONE,
                "db_timeout_s": self.db_timeout_s,
                "table": table,
                "columns": columns,
            }, time.monotonic() + self.answer_timeout_s)
        except (OSError, TimeoutError) as exc:
            self.stop()
            raise OperationalError(f"The prediction-log writer process did not start: {exc}") from exc
        return process


class _PipeWriter:
    """The writer process's stdin as ``pickle.dump`` writes to it: each write waits at most until ``deadline``.

    The pipe is non-blocking, so a process that has stopped reading (hung,
    stopped) makes a batch larger than the pipe's buffer a ``TimeoutError``
    instead of a writer thread blocked for good. ``os.write`` releases the
    GIL, so the event loop runs while a batch goes out a frame at a time.
    """

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.deadline = math.inf

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        while view:
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:
                remaining = self.deadline - time.monotonic()
                if remaining <= 0 or not select.select([], [self.fd], [], remaining)[1]:
                    raise TimeoutError("the writer process did not take its batch in time") from None
                continue
            view = view[written:]
        return len(data)

    def send(self, message: Any, deadline: float) -> None:
        self.deadline = deadline
        pickle.dump(message, self, protocol=pickle.HIGHEST_PROTOCOL)


def _read_exactly(fd: int, size: int, deadline: float | None) -> bytes:
    chunks: list[bytes] = []
    while size:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError("the writer process did not answer in time")
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise EOFError("the writer process exited")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _receive(fd: int, deadline: float | None = None) -> Any:
    (size,) = _HEADER.unpack(_read_exactly(fd, _HEADER.size, deadline))
    return pickle.loads(_read_exactly(fd, size, deadline))


# -- the child's side -------------------------------------------------------------------


def _send(stream: IO[bytes], message: Any) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(payload)) + payload)
    stream.flush()


def serve(setup: dict[str, Any], requests: IO[bytes], answers: IO[bytes]) -> None:
    """The writer process's loop: insert each batch it is sent, answer, until its input ends."""
    inserter = Inserter(using="default", db_timeout_s=setup["db_timeout_s"], table=setup["table"],
                        columns=tuple(setup["columns"]))
    while True:
        try:
            _op, batch = pickle.load(requests)
        except (EOFError, pickle.UnpicklingError):  # closed, or cut off mid-batch
            break
        try:
            answer: tuple[Any, ...] = ("ok", inserter.insert([Row._make(values) for values in batch]))
        except ROW_ERRORS as exc:
            answer = ("row", f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            inserter.close()
            answer = ("db", f"{type(exc).__name__}: {exc}")
        _send(answers, answer)
    inserter.close()


def main() -> None:
    # Answers go to a copy of stdout; stdout itself goes to stderr, so that
    # nothing Django or a driver prints can end up in the middle of a message.
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = os.fdopen(0, "rb")
    try:
        setup = pickle.load(requests)
    except EOFError:
        return

    import django
    from django.conf import settings

    settings.configure(
        DATABASES={"default": setup["database"]}, USE_TZ=setup["use_tz"], TIME_ZONE=setup["time_zone"],
        INSTALLED_APPS=[],
    )
    django.setup()
    serve(setup, requests, answers)


if __name__ == "__main__":
    main()
