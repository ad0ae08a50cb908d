"""The gRPC service in process, on a real port and channel, with the demo pool and a model the test holds."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from tritonclient.grpc import service_pb2

from monitoring import events
from streaming.oip.infer import Inferences
from streaming.oip.keys import key_cache
from streaming.oip.rpc.server import GrpcService

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
METHOD = "/inference.GRPCInferenceService/"


@dataclass
class Rpc:
    service: GrpcService
    inferences: Inferences
    channel: grpc.aio.Channel

    def call(self, method: str, response: Any) -> Any:
        return self.channel.unary_unary(METHOD + method, request_serializer=lambda m: m.SerializeToString(),
                                        response_deserializer=response.FromString)


@pytest.fixture
async def rpc(service):
    key_cache.clear()
    inferences = Inferences()
    server = GrpcService("127.0.0.1", 0, inferences)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.bound_port}")
    yield Rpc(server, inferences, channel)
    await channel.close()
    await server.stop(timeout_s=1.0, grace_s=0.1)
    key_cache.clear()


@pytest.fixture
def reported(monkeypatch):
    """The PredictionEvents the service emits."""
    seen: list[events.PredictionEvent] = []
    monkeypatch.setattr(events, "_prediction_sinks", [seen.append])
    return seen


def request(model: str, rows: list[list[float]], rid: str = "r") -> Any:
    message = service_pb2.ModelInferRequest(model_name=model, id=rid)
    tensor = message.inputs.add(name="x", datatype="FP64", shape=[len(rows), len(rows[0])])
    tensor.contents.fp64_contents.extend(value for row in rows for value in row)
    return message


def infer(rpc: Rpc, message: Any, key: str, timeout_s: float = 10.0) -> asyncio.Future[Any]:
    """The call, started now."""
    call = rpc.call("ModelInfer", service_pb2.ModelInferResponse)
    return asyncio.ensure_future(call(message, metadata=(("authorization", f"Bearer {key}"),), timeout=timeout_s))


async def refused(call: asyncio.Future[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def until(condition, timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition did not hold in time")


async def known_key(rpc: Rpc, api_key, **fields) -> str:
    """A new key, already looked up once: requests with it go to the pool without a database round trip."""
    key = api_key(**fields)
    ready = rpc.call("ModelReady", service_pb2.ModelReadyResponse)
    reply = await ready(service_pb2.ModelReadyRequest(name="iris"), metadata=(("authorization", f"Bearer {key}"),))
    assert reply.ready
    return key


def values(reply: Any) -> list[float]:
    import numpy as np

    return np.frombuffer(reply.raw_output_contents[0], dtype="<f8").tolist()


async def test_a_full_model_queue_is_resource_exhausted_with_retry_after(rpc, service, api_key, controlled, reported):
    key = await known_key(rpc, api_key)
    controlled.release.clear()
    batcher = service.entry("test-controlled").batcher
    held = [infer(rpc, request("test-controlled", [[0, 1]], rid="0"), key)]
    await until(lambda: batcher.in_flight_rows == 1)
    held += [infer(rpc, request("test-controlled", [[i, 1]], rid=str(i)), key) for i in range(1, 5)]
    await until(lambda: batcher.queue_depth == 4)
    error = await refused(infer(rpc, request("test-controlled", [[9, 9]]), key))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert int(dict(error.trailing_metadata())["retry-after"]) >= 1
    controlled.release.set()
    assert [values(await call) for call in held] == [[i + 1.0] for i in range(5)]
    infers = [e for e in reported if e.model == "test-controlled"]
    assert sorted(e.outcome for e in infers) == ["ok"] * 5 + ["overloaded"]
    assert {e.protocol for e in infers} == {"grpc"}


async def test_a_request_past_its_deadline_is_deadline_exceeded(rpc, service, api_key, controlled, settings, reported):
    settings.PLATFORM_REQUEST_TIMEOUT_MS = 100
    key = await known_key(rpc, api_key)
    controlled.release.clear()
    batcher = service.entry("test-controlled").batcher
    held = infer(rpc, request("test-controlled", [[1, 1]], rid="held"), key)
    await until(lambda: batcher.in_flight_rows == 1)
    late = infer(rpc, request("test-controlled", [[5, 5], [6, 6]], rid="late"), key)
    await until(lambda: batcher.queue_depth == 1)
    await asyncio.sleep(0.3)
    controlled.release.set()
    assert values(await held) == [2.0]
    assert (await refused(late)).code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert {e.request_id: e.outcome for e in reported} == {"held": "ok", "late": "timeout"}
    assert 2 not in controlled.calls


async def test_a_client_that_gives_up_while_queued_has_its_request_dropped_unrun(
        rpc, service, api_key, controlled, reported):
    key = await known_key(rpc, api_key)
    controlled.release.clear()
    batcher = service.entry("test-controlled").batcher
    held = infer(rpc, request("test-controlled", [[1, 1]], rid="held"), key)
    await until(lambda: batcher.in_flight_rows == 1)
    leaving = infer(rpc, request("test-controlled", [[2, 2]] * 3, rid="leaving"), key, timeout_s=0.5)
    assert (await refused(leaving)).code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await until(lambda: any(e.request_id == "leaving" for e in reported))
    controlled.release.set()
    assert values(await held) == [2.0]
    assert {e.request_id: e.outcome for e in reported} == {"held": "ok", "leaving": "not_delivered"}
    assert 3 not in controlled.calls


async def test_while_draining_new_requests_are_unavailable_and_accepted_ones_answered(
        rpc, service, api_key, controlled, reported):
    key = await known_key(rpc, api_key)
    controlled.release.clear()
    batcher = service.entry("test-controlled").batcher
    held = infer(rpc, request("test-controlled", [[1, 2]], rid="held"), key)
    await until(lambda: batcher.in_flight_rows == 1)
    stopping = asyncio.ensure_future(rpc.service.stop(timeout_s=5.0, grace_s=0.1))
    await until(lambda: rpc.inferences.draining)
    ready = rpc.call("ServerReady", service_pb2.ServerReadyResponse)
    assert not (await ready(service_pb2.ServerReadyRequest())).ready
    error = await refused(infer(rpc, request("iris", [IRIS_ROW], rid="late"), key))
    assert error.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in error.details()
    assert not stopping.done()
    controlled.release.set()
    assert values(await held) == [3.0]
    await asyncio.wait_for(stopping, 5)
    assert [(e.model, e.outcome) for e in reported] == [("iris", "overloaded"), ("test-controlled", "ok")]


async def test_a_model_version_that_failed_to_load_is_unavailable(rpc, service, api_key, controlled):
    key = await known_key(rpc, api_key)
    message = request("test-controlled", [[1, 2]])
    message.model_version = "2"
    error = await refused(infer(rpc, message, key))
    assert error.code() == grpc.StatusCode.UNAVAILABLE and "failed to load" in error.details()


async def test_a_stream_answers_its_accepted_requests_and_refuses_new_ones_in_band_while_draining(
        rpc, service, api_key, controlled, reported):
    key = await known_key(rpc, api_key)
    controlled.release.clear()
    batcher = service.entry("test-controlled").batcher
    call = rpc.channel.stream_stream(METHOD + "ModelStreamInfer", request_serializer=lambda m: m.SerializeToString(),
                                     response_deserializer=service_pb2.ModelStreamInferResponse.FromString)
    stream = call(metadata=(("authorization", f"Bearer {key}"),), timeout=10)
    await stream.write(request("test-controlled", [[1, 2]], rid="held"))
    await until(lambda: batcher.in_flight_rows == 1)
    stopping = asyncio.ensure_future(rpc.service.stop(timeout_s=5.0, grace_s=0.5))
    await until(lambda: rpc.inferences.draining)
    await stream.write(request("iris", [IRIS_ROW], rid="late"))
    refusal = await stream.read()
    assert refusal.error_message.startswith("UNAVAILABLE: The server is shutting down")
    assert refusal.infer_response.id == "late"
    controlled.release.set()
    answer = await stream.read()
    assert answer.error_message == "" and answer.infer_response.id == "held" and values(answer.infer_response) == [3.0]
    await stream.done_writing()
    await asyncio.wait_for(stopping, 5)
    assert sorted((e.request_id, e.outcome, e.protocol) for e in reported) == [
        ("held", "ok", "grpc"), ("late", "overloaded", "grpc")]
