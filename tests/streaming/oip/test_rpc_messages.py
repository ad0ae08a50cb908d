"""The gRPC service's messages: built from descriptors compiled from inference.proto, beside tritonclient's own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tritonclient.grpc import service_pb2

from streaming.oip.rpc import messages

PROTO = Path(messages.__file__).with_name("inference.proto")


def test_the_compiled_descriptors_are_those_of_the_proto_file(tmp_path):
    compiled = tmp_path / "inference.binpb"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"--proto_path={PROTO.parent}",
                    f"--descriptor_set_out={compiled}", str(PROTO)], check=True)
    assert compiled.read_bytes() == messages.DESCRIPTORS.read_bytes(), "run `make proto` after editing inference.proto"


def test_the_service_is_tritons_and_its_messages_read_what_tritonclient_writes():
    triton_service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert messages.SERVICE_NAME == triton_service.full_name
    for name, (request, response) in messages.METHODS.items():
        method = triton_service.methods_by_name[name]
        assert (request.DESCRIPTOR.full_name, response.DESCRIPTOR.full_name) == (
            method.input_type.full_name, method.output_type.full_name)
    sent = service_pb2.ModelInferRequest(model_name="iris", model_version="2", id="x")
    tensor = sent.inputs.add(name="input", datatype="FP64", shape=[1, 4])
    tensor.contents.fp64_contents.extend([1.0, 2.0, 3.0, 4.0])
    sent.outputs.add(name="label")
    sent.raw_input_contents.append(b"\x00" * 8)
    read = messages.ModelInferRequest.FromString(sent.SerializeToString())
    assert (read.model_name, read.model_version, read.id) == ("iris", "2", "x")
    assert list(read.inputs[0].contents.fp64_contents) == [1.0, 2.0, 3.0, 4.0]
    assert [o.name for o in read.outputs] == ["label"] and list(read.raw_input_contents) == [b"\x00" * 8]
