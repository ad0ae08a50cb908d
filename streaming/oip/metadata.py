"""The protocol's metadata: the server's, and each model's as this process serves it."""

from __future__ import annotations

from typing import Any

from inference.served import ServedVersion

from .codec import output_names

SERVER_NAME = "channels-inference-platform"
SERVER_VERSION = "0.1.0"
#: Protocol extensions this server implements: binary tensor data over HTTP (no repository API).
EXTENSIONS: list[str] = ["binary_tensor_data"]


def server() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}


def model(entry: ServedVersion, versions: list[int]) -> dict[str, Any]:
    """A model's metadata: its inputs as one ``[-1]`` FP64 tensor per feature, and its outputs."""
    n = -1
    outputs: list[dict[str, Any]] = []
    for name in output_names(entry):
        if name == "label":
            outputs.append({"name": name, "datatype": "BYTES", "shape": [n]})
        elif name == "probabilities":
            outputs.append({"name": name, "datatype": "FP64", "shape": [n, len(entry.classes or ())]})
        else:
            outputs.append({"name": name, "datatype": "FP64", "shape": [n]})
    return {
        "name": entry.name,
        "versions": [str(number) for number in sorted(versions)],
        "platform": SERVER_NAME,
        "inputs": [{"name": feature, "datatype": "FP64", "shape": [n]} for feature in entry.schema.features],
        "outputs": outputs,
    }
