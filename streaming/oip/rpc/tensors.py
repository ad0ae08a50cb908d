"""A ``ModelInferRequest``'s tensors for :mod:`streaming.oip.infer`, and an answer as a ``ModelInferResponse``.

A request carries each input's values either typed in ``contents`` or as
little-endian bytes in ``raw_input_contents`` (one entry per input, what
``tritonclient.grpc`` sends). Both become the same :class:`Tensor` the JSON
codec makes, checked by :func:`streaming.oip.codec.json_tensor` the same way
(datatype, count, integer range); the model's schema then checks the values
for finiteness as for every other request. Responses carry their outputs in
``raw_output_contents``, as Triton does: FP64 values, and BYTES labels each
prefixed by its length (4 bytes, little-endian).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..binary import bytes_tensor, raw_values
from ..codec import DATATYPES, Tensor, TensorError, json_tensor
from ..infer import Answer
from . import messages

#: Where ``contents`` keeps each datatype's values.
CONTENTS_FIELDS: dict[str, str] = {
    "FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents", "UINT64": "uint64_contents",
    **{f"INT{bits}": "int_contents" for bits in (8, 16, 32)},
    **{f"UINT{bits}": "uint_contents" for bits in (8, 16, 32)},
}


def request_tensors(request: Any) -> list[Tensor]:
    """The request's input tensors; raises ``TensorError`` naming the first fault."""
    inputs = request.inputs
    if not inputs:
        raise TensorError("inputs must be a non-empty list of tensors.")
    raw = request.raw_input_contents
    if raw and len(raw) != len(inputs):
        raise TensorError(f"raw_input_contents has {len(raw)} entries for {len(inputs)} inputs: "
                          "send every input's values raw, or none.")
    return [_tensor(tensor, raw[i] if raw else None) for i, tensor in enumerate(inputs)]


def _tensor(tensor: Any, raw: bytes | None) -> Tensor:
    name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
    if datatype not in DATATYPES:
        raise TensorError(f"Input {name!r}: datatype {datatype!r} is not supported; use one of "
                          f"{', '.join(sorted(DATATYPES))}.")
    if raw is None:
        field = CONTENTS_FIELDS.get(datatype)
        if field is None:
            raise TensorError(f"Input {name!r}: send {datatype} values in raw_input_contents.")
        values: list[Any] = list(getattr(tensor.contents, field))
    else:
        if tensor.HasField("contents"):
            raise TensorError(f"Input {name!r} has both contents and raw_input_contents.")
        values = raw_values(name, datatype, raw)
    return json_tensor({"name": name, "shape": shape, "datatype": datatype, "data": values})


def output_names(request: Any) -> list[Any] | None:
    """The output names the request asks for; None when it names none."""
    return [output.name for output in request.outputs] or None


def response(answer: Answer, rid: str) -> Any:
    """The ``ModelInferResponse`` of an answered request."""
    entry, outputs = answer.entry, answer.result.outputs
    reply = messages.ModelInferResponse(model_name=entry.name, model_version=str(entry.version), id=rid)
    reply.parameters["batch_size"].int64_param = answer.result.batch_size
    for name in answer.names:
        tensor = reply.outputs.add(name=name)
        if name == "label" and entry.classes is not None:
            classes = entry.classes
            tensor.datatype = "BYTES"
            tensor.shape.append(outputs.shape[0])
            reply.raw_output_contents.append(
                bytes_tensor([classes[winner] for winner in outputs.argmax(axis=1).tolist()]))
        else:  # probabilities, or a regressor's value
            tensor.datatype = "FP64"
            tensor.shape.extend(outputs.shape)
            reply.raw_output_contents.append(np.ascontiguousarray(outputs, dtype="<f8").tobytes())
    return reply
