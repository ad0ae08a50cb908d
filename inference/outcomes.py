"""What can become of a prediction request: the one list of outcome codes every layer shares.

``ok``, one of the protocol's error codes (PROTOCOL.md, "Errors"), or
``not_delivered``: the request was accepted but its reply never reached the
client (the connection had closed, or the client left before it ran). The
inference layer's exceptions carry them, the WebSocket protocol sends the
error codes, the prediction log stores them and the metrics label by them;
each of those reads them from here, so a new code is added in one place.

Framework-free: importable before Django's app registry is ready.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """How a request ended."""

    OK = "ok"
    INVALID_JSON = "invalid_json"
    INVALID_REQUEST = "invalid_request"
    INVALID_INPUT = "invalid_input"
    UNKNOWN_MODEL = "unknown_model"
    MODEL_UNAVAILABLE = "model_unavailable"
    OVERLOADED = "overloaded"
    RATE_LIMITED = "rate_limited"
    TIMEOUT = "timeout"
    INTERNAL = "internal"
    #: Never sent to a client: what the log and the metrics say of a reply that could not be.
    NOT_DELIVERED = "not_delivered"


#: Every outcome's value, as the prediction log and the metrics' ``outcome`` label hold it.
OUTCOMES: frozenset[str] = frozenset(outcome.value for outcome in Outcome)
#: The protocol's error codes: what an error reply may carry.
ERROR_CODES: frozenset[str] = OUTCOMES - {Outcome.OK.value, Outcome.NOT_DELIVERED.value}

#: The widest model name the registry accepts; the prediction log's model column has the same width.
MODEL_NAME_LENGTH = 64
