"""The protocol's message classes, built from ``inference.binpb`` in a descriptor pool of their own.

The package docstring says why they are not ``_pb2`` modules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

DESCRIPTORS = Path(__file__).with_name("inference.binpb")
PACKAGE = "inference"
SERVICE_NAME = f"{PACKAGE}.GRPCInferenceService"

pool = descriptor_pool.DescriptorPool()
for _file in descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS.read_bytes()).file:
    pool.Add(_file)


def message(name: str) -> Any:
    """The class of the message ``inference.<name>``."""
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))


ServerLiveRequest = message("ServerLiveRequest")
ServerLiveResponse = message("ServerLiveResponse")
ServerReadyRequest = message("ServerReadyRequest")
ServerReadyResponse = message("ServerReadyResponse")
ModelReadyRequest = message("ModelReadyRequest")
ModelReadyResponse = message("ModelReadyResponse")
ServerMetadataRequest = message("ServerMetadataRequest")
ServerMetadataResponse = message("ServerMetadataResponse")
ModelMetadataRequest = message("ModelMetadataRequest")
ModelMetadataResponse = message("ModelMetadataResponse")
ModelInferRequest = message("ModelInferRequest")
ModelInferResponse = message("ModelInferResponse")
ModelStreamInferResponse = message("ModelStreamInferResponse")

#: Each method's request and response class, by the method's name.
METHODS: dict[str, tuple[Any, Any]] = {
    method.name: (message(method.input_type.name), message(method.output_type.name))
    for method in pool.FindServiceByName(SERVICE_NAME).methods
}
