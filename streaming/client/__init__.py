"""A Python client for the prediction stream (docs/protocol.md, docs/client.md).

Imports nothing from Django or the platform, so that any Python service can use it::

    async with PredictionClient("ws://host:8000/ws/v1/predict/", api_key) as client:
        reply = await client.predict("iris", [[5.1, 3.5, 1.4, 0.2]])
"""

from .backoff import Backoff
from .client import PredictionClient
from .errors import (
    AuthenticationFailed,
    ClientClosed,
    ClientError,
    ConnectionLost,
    ConnectionRejected,
    ProtocolViolation,
    RequestFailed,
)
from .sync import SyncPredictionClient

__all__ = [
    "AuthenticationFailed",
    "Backoff",
    "ClientClosed",
    "ClientError",
    "ConnectionLost",
    "ConnectionRejected",
    "PredictionClient",
    "ProtocolViolation",
    "RequestFailed",
    "SyncPredictionClient",
]
