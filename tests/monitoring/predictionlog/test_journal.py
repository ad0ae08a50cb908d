"""The journal: each record on disk before its reply leaves, removed once settled, recovered after a crash."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from monitoring.models import PredictionRecord
from monitoring.predictionlog import journal as journal_module
from monitoring.predictionlog.exceptions import SpillFileError
from monitoring.predictionlog.journal import PATTERN, Journal
from monitoring.predictionlog.rows import Row
from tests.support.commands import REPO_ROOT

PREFIX = "0123456789abcdef"
ROW_BYTES = len(msgpack.packb(Row(f"{PREFIX}{0:016x}", 1.7e9, "iris", 1, "client", "req-00000", 1, "[[5.1]]",
                                  "[{}]", "ok", "", 1.25, 0.5, 2.125, 8), use_bin_type=True))


def row(seq: int) -> Row:
    """The record of sequence number ``seq`` of the log whose id prefix is ``PREFIX``; every one packs the same size."""
    return Row(f"{PREFIX}{seq:016x}", 1.7e9 + seq, "iris", 1, "client", f"req-{seq:05d}", 1, "[[5.1]]", "[{}]",
               "ok", "", 1.25, 0.5, 2.125, 8)


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob(PATTERN))


def recovered(directory: Path) -> list[Row]:
    """What another journal on ``directory`` recovers."""
    batches: list[list[Row]] = []
    Journal(directory).recover(batches.append)
    return [found for batch in batches for found in batch]


@pytest.fixture
def journals() -> Iterator[list[Journal]]:
    """Journals the test opens, closed after it."""
    opened: list[Journal] = []
    yield opened
    for journal in opened:
        journal.close()


@pytest.fixture
def journal(journals: list[Journal], tmp_path: Path):
    def make(directory: Path = tmp_path / "journal", **options) -> Journal:
        made = Journal(directory, id_prefix=PREFIX, **options)
        journals.append(made)
        return made

    return make


# -- writing and settling -------------------------------------------------------------------


async def test_rows_appended_on_the_event_loop_are_written_at_its_next_pass_and_recovered(journal, tmp_path):
    directory = tmp_path / "journal"
    written = journal(directory)
    for seq in range(50):
        written.append(row(seq), seq)
    assert segments(directory) == [], "nothing is written before the pass ends"
    await asyncio.sleep(0)
    assert len(segments(directory)) == 1
    assert segments(directory)[0].stat().st_size == 50 * ROW_BYTES
    assert written.close() is False, "unsettled records stay on disk"

    assert recovered(directory) == [row(seq) for seq in range(50)]
    assert segments(directory) == [], "a recovered journal is removed"


def test_a_segment_is_removed_once_it_is_closed_and_all_its_rows_settled(journal, tmp_path):
    directory = tmp_path / "journal"
    written = journal(directory, segment_bytes=10 * ROW_BYTES)
    for seq in range(35):  # outside an event loop each append is written at once
        written.append(row(seq), seq)
    first, second, third, current = segments(directory)

    written.settle([row(seq) for seq in range(15)])
    assert segments(directory) == [second, third, current], "the first is settled, the second has five to go"
    written.settle([row(seq) for seq in range(15, 20)])
    assert segments(directory) == [third, current]
    written.settle([row(seq) for seq in range(20, 35)])
    assert segments(directory) == [current], "the segment being written stays until the journal closes"
    assert written.close() is True
    assert segments(directory) == []


def test_a_segment_with_a_row_left_unsettled_stays(journal, tmp_path):
    directory = tmp_path / "journal"
    written = journal(directory, segment_bytes=10 * ROW_BYTES)
    for seq in range(20):
        written.append(row(seq), seq)
    written.settle([row(seq) for seq in range(20) if seq != 3])
    assert written.close() is False
    assert recovered(directory) == [row(seq) for seq in range(10)]


async def test_rows_settled_before_their_write_are_counted_once_written(journal, tmp_path):
    directory = tmp_path / "journal"
    written = journal(directory, segment_bytes=10 * ROW_BYTES)
    for seq in range(10):
        written.append(row(seq), seq)
    await asyncio.sleep(0)
    # The writer thread can settle rows the event loop appended but has not written yet.
    for seq in range(10, 20):
        written.append(row(seq), seq)
    written.settle([row(seq) for seq in range(10, 20)])
    assert len(segments(directory)) == 1, "the first segment keeps its ten unsettled rows"
    await asyncio.sleep(0)  # written: the first segment is closed, the second gets the early-settled rows
    assert len(segments(directory)) == 2

    # Counted against their own segment: it goes at close, and the first keeps exactly its rows.
    assert written.close() is False
    assert recovered(directory) == [row(seq) for seq in range(10)]


async def test_a_failed_write_never_raises_into_the_caller(journal, tmp_path, caplog):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the journal's directory should be")
    written = journal(blocker / "journal")
    loop = asyncio.get_running_loop()
    errors: list[dict] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    with caplog.at_level(logging.ERROR, logger="monitoring.predictionlog.journal"):
        for seq in range(5):
            written.append(row(seq), seq)
        written.write_pending()  # as the server does before it sends replies
        for seq in range(5, 10):
            written.append(row(seq), seq)
        await asyncio.sleep(0)  # and as the loop's callback does
    assert errors == []
    assert "Could not write 5 prediction records to the journal" in caplog.text
    written.settle([row(seq) for seq in range(10)])
    assert written.close() is True


def test_rows_whose_write_failed_are_never_counted_against_a_segment(journal, tmp_path, monkeypatch, caplog):
    directory = tmp_path / "journal"
    written = journal(directory, segment_bytes=20 * ROW_BYTES)
    for seq in range(5):
        written.append(row(seq), seq)

    def disk_full(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as disk, caplog.at_level(logging.ERROR, logger="monitoring.predictionlog.journal"):
        disk.setattr(journal_module, "_write_all", disk_full)
        for seq in range(5, 10):
            written.append(row(seq), seq)  # outside an event loop: written at once, and failing
    assert "No space left on device" in caplog.text
    for seq in range(10, 15):
        written.append(row(seq), seq)

    # Every row reaches the database, the ones never journaled too, except the first five.
    written.settle([row(seq) for seq in range(5, 15)])
    for seq in range(15, 35):  # the first segment fills up and is closed
        written.append(row(seq), seq)
    written.settle([row(seq) for seq in range(15, 35)])
    assert written.close() is False, "the first segment still holds five unsettled rows"
    assert recovered(directory) == [row(seq) for seq in [*range(5), *range(10, 25)]]


# -- recovering -----------------------------------------------------------------------------

WRITER = """
import json, os, sys
from monitoring.predictionlog.journal import Journal
from monitoring.predictionlog.rows import Row

journal = Journal(sys.argv[1], id_prefix=sys.argv[2])
for seq, values in enumerate(json.loads(sys.argv[3])):
    journal.append(Row(*values), seq)
print("written", flush=True)
sys.stdin.readline()
os._exit(1)  # no close, no cleanup: as a killed process leaves it
"""


def dead_process_journal(directory: Path, rows: list[Row], prefix: str = PREFIX) -> subprocess.Popen[str]:
    """A process that journals ``rows`` into ``directory`` and dies without closing as soon as its stdin has a line."""
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(directory), prefix, json.dumps(rows)],
        cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "written"
    return writer


def die(writer: subprocess.Popen[str]) -> None:
    assert writer.stdin is not None
    writer.stdin.write("die\n")
    writer.stdin.flush()
    assert writer.wait(timeout=30) == 1


def test_recover_takes_a_dead_process_journal_but_no_live_one(journal, tmp_path):
    directory = tmp_path / "journal"
    theirs = [row(seq)._replace(request_id=f"theirs-{seq}") for seq in range(40)]
    writer = dead_process_journal(directory, theirs)
    try:
        ours = journal(directory)
        ours.append(row(0), 0)
        mine = [path for path in segments(directory) if path.name.startswith(f"journal-{os.getpid()}-")]
        assert len(mine) == 1

        batches: list[list[Row]] = []
        assert ours.recover(batches.append) == 0, "a live process's journal is left alone"
        assert len(segments(directory)) == 2
    finally:
        die(writer)

    assert ours.recover(batches.append) == 40
    assert [found for batch in batches for found in batch] == theirs
    assert segments(directory) == mine, "the dead journal is removed, this process's own segment kept"


def test_recover_skips_a_torn_last_record(journal, tmp_path, caplog):
    directory = tmp_path / "journal"
    written = journal(directory)
    for seq in range(5):
        written.append(row(seq), seq)
    assert written.close() is False
    (path,) = segments(directory)
    with path.open("ab") as segment:  # the process died in the middle of a write
        segment.write(msgpack.packb(row(5), use_bin_type=True)[: ROW_BYTES // 2])
    assert recovered(directory) == [row(seq) for seq in range(5)]
    assert segments(directory) == []


def test_recover_reads_records_of_the_release_before_the_protocol_column(tmp_path):
    directory = tmp_path / "journal"
    directory.mkdir()
    # A segment no process holds, of that release: its records have every field but the last.
    path = directory / "journal-4242-0123-00000.bin"
    path.write_bytes(b"".join(msgpack.packb(list(row(seq))[:-1], use_bin_type=True) for seq in range(3)))
    assert recovered(directory) == [row(seq)._replace(protocol="websocket") for seq in range(3)]


def test_recover_stops_at_a_damaged_record_and_keeps_the_rows_before_it(journal, tmp_path, caplog):
    directory = tmp_path / "journal"
    written = journal(directory)
    for seq in range(3):
        written.append(row(seq), seq)
    assert written.close() is False
    (path,) = segments(directory)
    with path.open("ab") as segment:
        segment.write(b"\xc1" + msgpack.packb(row(3), use_bin_type=True))  # 0xc1 is never used by MessagePack
    with caplog.at_level(logging.WARNING, logger="monitoring.predictionlog.journal"):
        assert recovered(directory) == [row(seq) for seq in range(3)]
    assert "A journal ends in a damaged record" in caplog.text
    assert segments(directory) == []


def test_a_journal_whose_rows_could_not_be_handed_on_stays(journal, tmp_path):
    directory = tmp_path / "journal"
    written = journal(directory)
    for seq in range(5):
        written.append(row(seq), seq)
    written.close()

    def refuse(rows: list[Row]) -> None:
        raise SpillFileError("The spill directory is full.")

    assert Journal(directory).recover(refuse) == 0
    assert len(segments(directory)) == 1
    assert recovered(directory) == [row(seq) for seq in range(5)]
    assert segments(directory) == []


# -- in the prediction log --------------------------------------------------------------------


def test_a_log_stopped_with_everything_written_leaves_no_journal(make_log, make_event, tmp_path):
    directory = tmp_path / "journal"
    log = make_log(journal_dir=directory)
    for _ in range(120):
        log.record(make_event())
    assert log.flush(timeout_s=10)
    assert len(segments(directory)) == 1, "every record was journaled"
    assert log.stop(timeout_s=5)
    assert PredictionRecord.objects.count() == 120
    assert segments(directory) == []


def test_a_log_started_over_a_dead_process_journal_writes_its_records(make_log, tmp_path):
    directory = tmp_path / "journal"
    prefix = "fedcba9876543210"
    rows = [row(seq)._replace(event_id=f"{prefix}{seq:016x}", request_id=f"dead-{seq}") for seq in range(30)]
    die(dead_process_journal(directory, rows, prefix))
    assert len(segments(directory)) == 1

    log = make_log(journal_dir=directory)
    log.start()
    assert log.flush(timeout_s=20)
    assert sorted(PredictionRecord.objects.values_list("request_id", flat=True)) == sorted(
        found.request_id for found in rows
    )
    assert segments(directory) == []
    assert not list((tmp_path / "spill").glob("*.jsonl")), "the recovered records were replayed"
