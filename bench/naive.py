"""The naive approach that tutorials teach: load the model in the consumer, call predict per message.

This is the Channels tutorial's synchronous ``WebsocketConsumer`` with a model
loaded at import: every message is decoded with ``json``, run through
``predict_proba`` (scikit-learn) or ``model.predict`` (Keras) on its own, and
answered. No batching, no prediction log, no metrics. Channels runs a
synchronous consumer's handlers one at a time in a worker thread, so the
event loop stays free for the sockets while the model calls queue up.

The models come from the same registry artifacts the platform serves (skops
for scikit-learn, ``keras.saving.load_model`` for Keras), named by
``BENCH_NAIVE_MODELS`` (default ``iris,digits``). Serve it the way the
platform is served::

    python -m platform_core.server -b 127.0.0.1 -p 8002 \\
        --websocket-max-message-size 4194304 bench.naive:application

It answers in the protocol's shapes (``ready``, ``prediction``, ``error``) so
the load generator drives it exactly as it drives the platform.
"""

from __future__ import annotations

import json
import os
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "platform_core.settings")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import django  # noqa: E402

django.setup()

import msgpack  # noqa: E402
import numpy as np  # noqa: E402
from channels.generic.websocket import WebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402

from inference.artifacts import artifact_path  # noqa: E402
from inference.models import MLModel  # noqa: E402


class NaiveModel:
    """A model as a tutorial holds it: the estimator, its framework and its class labels."""

    def __init__(self, mlmodel: MLModel) -> None:
        version = mlmodel.active_version
        if version is None:
            raise LookupError(f"The model {mlmodel.name!r} has no active version to load.")
        path = artifact_path(version.artifact)
        self.name = mlmodel.name
        self.version = version.version
        self.inputs = list(mlmodel.inputs)
        self.framework = version.framework
        if self.framework == "keras":
            import keras

            self.model = keras.saving.load_model(path)
            self.classes = [str(c) for c in version.metadata.get("classes") or range(10)]
        else:
            import skops.io

            self.model = skops.io.load(path, trusted=skops.io.get_untrusted_types(file=path))
            self.classes = [str(c) for c in self.model.classes_]

    def predict(self, inputs: list[list[float]]) -> list[dict[str, Any]]:
        if self.framework == "keras":
            probabilities = self.model.predict(np.array(inputs, dtype="float32"), verbose=0)
        else:
            probabilities = self.model.predict_proba(np.array(inputs, dtype="float64"))
        classes = self.classes
        return [
            {"label": classes[int(row.argmax())], "probabilities": dict(zip(classes, row.tolist(), strict=True))}
            for row in probabilities
        ]


def load_models() -> dict[str, NaiveModel]:
    names = [n.strip() for n in os.environ.get("BENCH_NAIVE_MODELS", "iris,digits").split(",") if n.strip()]
    return {m.name: NaiveModel(m) for m in MLModel.objects.filter(name__in=names)}


MODELS = load_models()


class NaivePredictConsumer(WebsocketConsumer):
    def connect(self) -> None:
        """Called when a WebSocket handshake arrives."""
        self.accept()
        models = {m.name: {"version": m.version, "inputs": m.inputs, "outputs": "label and probabilities"}
                  for m in MODELS.values()}
        self.send(text_data=json.dumps({"type": "ready", "protocol": 1, "models": models}))

    def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Called for every frame, one at a time: predict and answer."""
        binary = text_data is None
        request = msgpack.unpackb(bytes_data, raw=False) if text_data is None else json.loads(text_data)
        model = MODELS.get(request.get("model"))
        if model is None:
            reply = {"type": "error", "id": request.get("id"),
                     "error": {"code": "unknown_model", "message": "No such model."}}
        else:
            try:
                outputs = model.predict(request["inputs"])
            except Exception as exc:  # the tutorial's only safety net
                reply = {"type": "error", "id": request.get("id"), "error": {"code": "internal", "message": str(exc)}}
            else:
                reply = {"type": "prediction", "id": request.get("id"), "model": model.name,
                         "version": model.version, "outputs": outputs, "batch_size": len(outputs)}
        if binary:
            self.send(bytes_data=msgpack.packb(reply, use_bin_type=True))
        else:
            self.send(text_data=json.dumps(reply))


application = ProtocolTypeRouter(
    {"websocket": URLRouter([re_path(r"^ws/v1/predict/", NaivePredictConsumer.as_asgi())])}
)
