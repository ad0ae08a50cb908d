"""The Open Inference Protocol over gRPC: KServe v2's ``inference.GRPCInferenceService``, as Triton serves it.

``inference.proto`` is the part of the protocol served here (health,
metadata, ``ModelInfer`` and Triton's ``ModelStreamInfer``) with the
protocol's package, service and field numbers, so ``tritonclient.grpc`` and
KServe's clients talk to it. ``scripts/generate_oip_protos.sh`` (``make
proto``) compiles it with grpcio-tools' protoc into ``inference.binpb``, the
descriptors that :mod:`.messages` loads.

Why compiled descriptors rather than ``_pb2`` modules: generated modules
register their messages in protobuf's process-wide descriptor pool, and
every client of the protocol (``tritonclient.grpc``, the ``kserve`` SDK)
registers the same names (``inference.ModelInferRequest``...) from its own
file; the pool refuses a second definition, so a process could not hold
both the service and a client (a Django project calling a Triton server, our
own tests). :mod:`.messages` builds the classes in a pool of their own from
the same descriptors a ``_pb2`` module embeds, with the same C
implementation. ``tritonclient``'s own generated modules are no dependency
to take instead: ``tritonclient[grpc]`` pins protobuf below 7, which the
platform's TensorFlow and grpcio-tools do not run with.

:mod:`.tensors` turns a request into the tensors :mod:`streaming.oip.infer`
reads and an answer into a response, :mod:`.status` says the protocol's
refusals as gRPC codes, :mod:`.service` holds the methods and :mod:`.server`
runs them on the server's event loop.
"""
