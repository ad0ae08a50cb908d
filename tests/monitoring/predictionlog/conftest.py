"""Helpers of the prediction-log tests; their fixtures (logs, events, a locked database) are in ``tests/monitoring``."""

from __future__ import annotations

import json
from pathlib import Path

from monitoring.models import PredictionRecord

WRITTEN = "platform_log_records_written_total"
SPILLED = "platform_log_records_spilled_total"
LOST = "platform_log_records_lost_total"
WRITE_ERRORS = "platform_log_write_errors_total"


def spill_lines(directory: Path) -> int:
    return sum(path.read_bytes().count(b"\n") for path in directory.glob("predictions-*.jsonl"))


def assert_exactly_once(request_ids: list[str]) -> None:
    stored = list(PredictionRecord.objects.values_list("request_id", flat=True))
    assert len(stored) == len(request_ids), f"{len(stored)} records for {len(request_ids)} requests"
    assert sorted(stored) == sorted(request_ids)



def served(make_event, binary: bool, **fields):
    """An event as the consumer reports a served prediction: with its frame and its encoded reply."""
    import msgpack

    event = make_event(**fields)
    body = {"type": "predict", "id": event.request_id, "model": "iris", "inputs": event.inputs}
    reply = {"type": "prediction", "id": event.request_id, "model": "iris", "version": 1,
             "outputs": event.outputs, "batch_size": 8, "timing": {"queue_ms": 1.25}}
    if binary:
        event.frame, event.reply = msgpack.packb(body), msgpack.packb(reply)
    else:
        # The standard library's encoder: a client may send integers orjson cannot write.
        event.frame, event.reply = json.dumps(body), json.dumps(reply).encode()
    return event
