"""What the serving path reports, and who listens.

``streaming`` calls these functions on the event loop, once per request or
connection, and the inference pool's batch observer (wired by
``platform_core``) once per model call; each registered sink must return at once
(append to a buffer, bump a counter) and never touch the database or the
network on the caller's time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

logger = logging.getLogger(__name__)


class Protocol(StrEnum):
    """How a request reached the platform: the prediction log's ``protocol`` and the metrics' label."""

    WEBSOCKET = "websocket"
    #: The Open Inference Protocol over HTTP (``/v2``).
    HTTP = "http"
    #: The Open Inference Protocol over gRPC.
    GRPC = "grpc"


#: Every ``protocol`` value, as the prediction log and the metrics' label hold it.
PROTOCOLS: frozenset[str] = frozenset(protocol.value for protocol in Protocol)


@dataclass(slots=True)
class PredictionEvent:
    """One answered request: a prediction, or the error it got."""

    #: Wall-clock time (Unix seconds) the frame arrived.
    received_at: float
    model: str | None
    version: int | None
    #: The API key's name (never its secret), or None where authentication is off.
    api_key: str | None
    request_id: Any
    rows: int
    inputs: Any
    outputs: Any
    #: "ok" or the protocol's error code.
    outcome: str
    queue_ms: float | None = None
    inference_ms: float | None = None
    total_ms: float | None = None
    batch_size: int | None = None
    error: str | None = None
    #: A served prediction's frame as the client sent it (JSON text or
    #: MessagePack bytes) and its reply as sent (bytes): the prediction log
    #: parses these for the inputs and outputs off the event loop.
    frame: str | bytes | None = None
    reply: bytes | None = None
    #: The bounded ``(model, version)`` label values for metrics and the
    #: dashboard: the name and number where the server serves them, ``""``
    #: otherwise (a made-up name must not grow a metric or a table).
    labels: tuple[str, str] = ("", "")
    #: Which protocol the request came by, one of ``PROTOCOLS``.
    protocol: str = Protocol.WEBSOCKET.value


PredictionSink = Callable[[PredictionEvent], None]
ConnectionSink = Callable[[int], None]
BatchSink = Callable[[str, int, Any], None]

_prediction_sinks: list[PredictionSink] = []
_connection_sinks: list[ConnectionSink] = []
_in_flight_sinks: list[ConnectionSink] = []
_batch_sinks: list[BatchSink] = []


def _add(sinks: list, sink: Callable) -> None:
    if sink not in sinks:
        sinks.append(sink)


def on_prediction(sink: PredictionSink) -> None:
    _add(_prediction_sinks, sink)


def on_connection_change(sink: ConnectionSink) -> None:
    """``sink(+1)`` when a prediction or dashboard connection opens, ``sink(-1)`` when it closes."""
    _add(_connection_sinks, sink)


def on_in_flight_change(sink: ConnectionSink) -> None:
    """``sink(+1)`` when a request is accepted for a model, ``sink(-1)`` when it is answered."""
    _add(_in_flight_sinks, sink)


def on_batch(sink: BatchSink) -> None:
    """``sink(model, version, stats)`` after every model call, stats an ``inference.batching.BatchStats``.

    The inference pool does not know this module: the composition root
    (``platform_core``) hands :func:`batch` to it as its batch observer.
    """
    _add(_batch_sinks, sink)


def _call(sinks: list, *args: Any) -> None:
    for sink in sinks:
        try:
            sink(*args)
        except Exception:  # a broken sink must never cost a reply
            logger.exception("Monitoring sink %r failed", sink)


def prediction(event: PredictionEvent) -> None:
    _call(_prediction_sinks, event)


def connection_change(delta: int) -> None:
    _call(_connection_sinks, delta)


def in_flight_change(delta: int) -> None:
    _call(_in_flight_sinks, delta)


def batch(model: str, version: int, stats: Any) -> None:
    _call(_batch_sinks, model, version, stats)
