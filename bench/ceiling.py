"""The transport ceiling: a bare Channels consumer that answers every frame with a fixed reply.

No model, no batching, no logging, no metrics: what is left is what every
request costs in daphne, autobahn and Channels, plus decoding the frame and
encoding a reply of the platform's size and shape. No server on this stack
can answer faster, so it is the yardstick for the platform's overhead.

Serve it the way the platform is served::

    python -m platform_core.server -b 127.0.0.1 -p 8001 \\
        --websocket-max-message-size 4194304 bench.ceiling:application

It speaks enough of the protocol for the load generator: ``ready`` on
connect with the demo models' input schemas, and one ``prediction`` (or an
``unknown_model`` error) per request, echoing its id, with one fixed output
row per input row, encoded the way the request was.

With ``BENCH_CEILING_DB_CLEANUP=0`` the consumer skips what Channels'
``AsyncConsumer.dispatch`` does before every handler,
``aclose_old_connections()``: a ``close_old_connections`` call run through
``sync_to_async``, a round trip to a worker thread for every frame. A
consumer that never touches the database on its hot path can skip it; the
difference between the two ceilings is what that round trip costs.

With ``BENCH_CEILING_DIRECT=1`` it also takes the two other shortcuts the
platform's prediction consumer takes: it reads frames in its own loop rather
than Channels' ``await_many_dispatch`` (no channel-layer subscription, no task
and ``asyncio.wait`` per frame), and sends each reply at once through the
platform server's ``platform.send_frame`` scope extension rather than the
ASGI ``send`` coroutine. That is the fastest a bare responder gets on the
platform's own transport, and so the strictest yardstick.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "platform_core.settings")

import django  # noqa: E402

django.setup()

import msgpack  # noqa: E402
import orjson  # noqa: E402
from channels.consumer import get_handler_name  # noqa: E402
from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402

from streaming.transport import DirectReadLoop, frame_sender  # noqa: E402

IRIS_INPUTS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
DIGITS_INPUTS = [f"pixel_{i // 8}_{i % 8}" for i in range(64)]


def _classifier_row(classes: list[str]) -> dict[str, Any]:
    share = round(1.0 / len(classes), 6)
    return {"label": classes[0], "probabilities": dict.fromkeys(classes, share)}


#: name -> (input names, the output row every request gets), shaped like the demo models' replies.
MODELS: dict[str, tuple[list[str], dict[str, Any]]] = {
    "iris": (IRIS_INPUTS, _classifier_row(["setosa", "versicolor", "virginica"])),
    "digits": (DIGITS_INPUTS, _classifier_row([str(d) for d in range(10)])),
}
TIMING = {"queue_ms": 0.0, "inference_ms": 0.0, "total_ms": 0.0}
READY = orjson.dumps(
    {
        "type": "ready",
        "protocol": 1,
        "max_in_flight": 256,
        "max_rows": 1024,
        "models": {name: {"version": 1, "inputs": inputs, "outputs": "fixed"} for name, (inputs, _) in MODELS.items()},
    }
).decode()


class CeilingConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        """Called when a WebSocket handshake arrives."""
        await self.accept()
        await self.send(text_data=READY)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Called for every frame: decode it, answer it with the fixed reply."""
        binary, reply = self.reply(text_data, bytes_data)
        if binary:
            await self.send(bytes_data=msgpack.packb(reply, use_bin_type=True))
        else:
            await self.send(text_data=orjson.dumps(reply).decode())

    @staticmethod
    def reply(text_data: str | None, bytes_data: bytes | None) -> tuple[bool, dict[str, Any]]:
        binary = text_data is None
        body = msgpack.unpackb(bytes_data, raw=False) if text_data is None else orjson.loads(text_data)
        name = body.get("model")
        model = MODELS.get(name)
        if model is None:
            reply: dict[str, Any] = {
                "type": "error",
                "id": body.get("id"),
                "error": {"code": "unknown_model", "message": f"There is no model named {name!r}."},
            }
        else:
            rows = len(body.get("inputs") or ())
            reply = {
                "type": "prediction",
                "id": body.get("id"),
                "model": name,
                "version": 1,
                "outputs": [model[1]] * rows,
                "batch_size": rows,
                "timing": TIMING,
            }
        return binary, reply


class NoCleanupCeilingConsumer(CeilingConsumer):
    async def dispatch(self, message: dict[str, Any]) -> None:
        """Called for every message: the handler, without Channels' database cleanup in a thread first."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)


class DirectCeilingConsumer(DirectReadLoop, NoCleanupCeilingConsumer):
    """Reads frames in its own loop and sends through ``platform.send_frame``, as the platform's consumer does."""

    async def connect(self) -> None:
        self.send_frame = frame_sender(self.scope)
        await super().connect()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Called for every frame: the fixed reply, sent at once when the server offers it."""
        if self.send_frame is None:
            await super().receive(text_data, bytes_data)
            return
        binary, reply = self.reply(text_data, bytes_data)
        self.send_frame(msgpack.packb(reply, use_bin_type=True) if binary else orjson.dumps(reply), binary)


if os.environ.get("BENCH_CEILING_DIRECT", "0") == "1":
    consumer: type[CeilingConsumer] = DirectCeilingConsumer
elif os.environ.get("BENCH_CEILING_DB_CLEANUP", "1") != "0":
    consumer = CeilingConsumer
else:
    consumer = NoCleanupCeilingConsumer
application = ProtocolTypeRouter(
    {"websocket": URLRouter([re_path(r"^ws/v1/predict/", consumer.as_asgi())])}
)
