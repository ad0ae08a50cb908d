"""What the prediction stream reports of each request it accepted or refused: its ``PredictionEvent``.

The consumer reports every request once, with what the client actually got:
its prediction, its error reply, or nothing (``not_delivered``: the
connection had closed, or the request was dropped unrun because the client
left). The prediction log and the metrics take it from there.
"""

from __future__ import annotations

import time
from typing import Any

from inference.outcomes import Outcome
from inference.served import ServedVersion
from monitoring.events import PredictionEvent

from .protocol import ProtocolError

#: Why a request's reply never reached the client, as the prediction log keeps it.
CLOSED_BEFORE_REPLY = "Not delivered: the connection had closed before the reply could be sent."
LEFT_BEFORE_RUN = "Not delivered: the client disconnected before the request ran; it was not run."


def answered(entry: ServedVersion, api_key: str | None, rid: Any, n_rows: int, inputs: Any, outputs: Any,
             outcome: str, received_wall: float, **fields: Any) -> PredictionEvent:
    """A request that reached a model; ``fields``: its timings, error, and for a prediction its frame and reply."""
    return PredictionEvent(
        received_at=received_wall,
        model=entry.name,
        version=entry.version,
        api_key=api_key,
        request_id=rid,
        rows=n_rows,
        inputs=inputs,
        outputs=outputs,
        outcome=outcome,
        labels=entry.labels,
        **fields,
    )


def refused(body: dict[str, Any] | None, exc: ProtocolError, default_model: str | None, api_key: str | None,
            labels_of: Any, received: float, received_wall: float, *, delivered: bool) -> PredictionEvent:
    """A frame refused before it reached a model, with what could be read of it.

    ``labels_of(model, version)``: the bounded metric labels for what the frame named.
    """
    body = body or {}
    model = body.get("model", default_model)
    version = body.get("version")
    if exc.entry is not None:
        model, version = exc.entry.name, exc.entry.version
        labels = exc.entry.labels
    else:
        labels = labels_of(model, version)
    inputs = body.get("inputs")
    return PredictionEvent(
        received_at=received_wall,
        model=model if isinstance(model, str) else None,
        version=version if type(version) is int else None,
        api_key=api_key,
        request_id=exc.request_id,
        rows=len(inputs) if isinstance(inputs, list) else 0,
        inputs=inputs,
        outputs=None,
        outcome=exc.code if delivered else Outcome.NOT_DELIVERED,
        total_ms=(time.perf_counter() - received) * 1000.0,
        error=exc.message if delivered else f"{CLOSED_BEFORE_REPLY} The reply was {exc.code}: {exc.message}",
        labels=labels,
    )
