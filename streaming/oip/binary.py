"""The protocol's binary tensor data: raw little-endian values, over HTTP (the extension) and gRPC (raw contents).

Over HTTP the extension ``binary_tensor_data`` lets a request's body be its
JSON (``Inference-Header-Content-Length`` bytes long) followed by the raw
values of the inputs whose ``parameters.binary_data_size`` says how many
bytes are theirs, in the order of ``inputs``; ``tritonclient.http`` sends
this by default. Such an input's values are read here into its ``data``, and
the JSON codec checks them as any other. A request asks for binary outputs
with ``parameters.binary_data_output`` (every output) or an output's
``parameters.binary_data``; those outputs' values then follow the response's
JSON in the same way. BYTES values are each prefixed by their length (4
bytes, little-endian), as Triton writes them.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from .codec import DATATYPES, TensorError

EXTENSION = "binary_tensor_data"
HEADER_LENGTH = b"inference-header-content-length"

#: The numpy type of each numeric datatype's raw bytes (little-endian, as the protocol says).
RAW_DTYPES: dict[str, np.dtype[Any]] = {
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    **{f"INT{bits}": np.dtype(f"<i{bits // 8}") for bits in (8, 16, 32, 64)},
    **{f"UINT{bits}": np.dtype(f"<u{bits // 8}") for bits in (8, 16, 32, 64)},
}


def raw_values(name: Any, datatype: Any, raw: bytes) -> list[Any]:
    """The values of an input's raw bytes, as Python numbers; raises ``TensorError``."""
    if datatype not in DATATYPES:
        raise TensorError(f"Input {name!r}: datatype {datatype!r} is not supported; use one of "
                          f"{', '.join(sorted(DATATYPES))}.")
    dtype = RAW_DTYPES[datatype]
    if len(raw) % dtype.itemsize:
        raise TensorError(f"Input {name!r}: {len(raw)} raw bytes are not a whole number of {datatype} values.")
    values: list[Any] = np.frombuffer(raw, dtype=dtype).tolist()
    return values


def header_length(headers: Any, body_length: int) -> int | None:
    """The length of the JSON part of a body with binary tensors; None for a body that is all JSON."""
    for name, value in headers:
        if name == HEADER_LENGTH:
            if not value.isdigit() or int(value) > body_length:
                raise TensorError(f"Inference-Header-Content-Length must be a number of bytes up to the body's "
                                  f"{body_length}, got {value.decode(errors='replace')!r}.")
            return int(value)
    return None


def read_binary_inputs(inputs: Any, binary: bytes) -> None:
    """Fill in the ``data`` of each input sent as binary, from ``binary``, the bytes after the JSON."""
    if type(inputs) is not list:
        return  # the codec says what is wrong with it
    offset = 0
    for tensor in inputs:
        parameters = tensor.get("parameters") if type(tensor) is dict else None
        size = parameters.get("binary_data_size") if type(parameters) is dict else None
        if size is None:
            continue
        name = tensor.get("name")
        if type(size) is not int or size < 0 or offset + size > len(binary):
            raise TensorError(f"Input {name!r}: binary_data_size {size!r} does not fit the "
                              f"{len(binary) - offset} bytes of binary data left.")
        if "data" in tensor:
            raise TensorError(f"Input {name!r} has both data and binary_data_size.")
        tensor["data"] = raw_values(name, tensor.get("datatype"), binary[offset:offset + size])
        offset += size
    if offset != len(binary):
        raise TensorError(f"{len(binary) - offset} bytes of binary data belong to no input.")


def binary_outputs(body: dict[str, Any], names: tuple[str, ...]) -> frozenset[str]:
    """The outputs the request wants as binary data."""
    parameters = body.get("parameters")
    every = type(parameters) is dict and parameters.get("binary_data_output") is True
    chosen: set[Any] = {name for name in names if every}
    for output in body.get("outputs") or ():
        if type(output) is dict and type(output.get("parameters")) is dict:
            wanted = output["parameters"].get("binary_data")
            if wanted is True:
                chosen.add(output.get("name"))
            elif wanted is False:
                chosen.discard(output.get("name"))
    return frozenset(chosen)


def bytes_tensor(values: list[Any]) -> bytes:
    """BYTES values as the protocol's raw form: each one's length (4 bytes, little-endian), then its bytes."""
    parts: list[bytes] = []
    for value in values:
        data = str(value).encode()
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def move_to_binary(tensors: list[dict[str, Any]], names: frozenset[str]) -> list[bytes]:
    """Take the values of the ``names`` output tensors out of their JSON; their raw bytes, in order."""
    chunks: list[bytes] = []
    for tensor in tensors:
        if tensor["name"] not in names:
            continue
        data = tensor.pop("data")
        raw = bytes_tensor(data) if tensor["datatype"] == "BYTES" else np.asarray(data, dtype="<f8").tobytes()
        tensor["parameters"] = {"binary_data_size": len(raw)}
        chunks.append(raw)
    return chunks
