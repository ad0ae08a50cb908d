"""The naive HTTP server the benchmark compares against: FastAPI calling ``predict_proba`` per request.

What a tutorial writes: one Open Inference Protocol ``infer`` route, no
batching, the model loaded with joblib at import. It runs in the benchmark's
own environment (``bench.http_compare.competitors``), under uvicorn, with the
model file named by ``NAIVE_MODEL_PATH``.
"""

from __future__ import annotations

import os
from typing import Any

import joblib
import numpy as np
from fastapi import FastAPI

model = joblib.load(os.environ["NAIVE_MODEL_PATH"])
classes = [str(c) for c in model.classes_]
app = FastAPI()


@app.post("/v2/models/{name}/infer")
def infer(name: str, body: dict[str, Any]) -> dict[str, Any]:
    tensor = body["inputs"][0]
    rows = np.asarray(tensor["data"], dtype="float64").reshape(tensor["shape"])
    probabilities = model.predict_proba(rows)
    labels = [classes[i] for i in probabilities.argmax(axis=1)]
    return {
        "model_name": name,
        "id": body.get("id", ""),
        "outputs": [
            {"name": "label", "shape": [len(labels), 1], "datatype": "BYTES", "data": labels},
            {"name": "probabilities", "shape": list(probabilities.shape), "datatype": "FP64",
             "data": probabilities.ravel().tolist()},
        ],
    }
