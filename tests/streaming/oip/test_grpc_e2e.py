"""The Open Inference Protocol over gRPC through a real server process (``--grpc-port``), with tritonclient."""

from __future__ import annotations

import asyncio
import json
import queue
import signal
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from bench.servers import free_port
from tests.monitoring.test_prediction_log_e2e import assert_each_request_once, stored
from tests.streaming.oip.test_http_e2e import DEMO_MODELS, IRIS_ROW, WINDOW, bearer, infer_body, post, websocket_reply
from tests.support.daphne import DaphneServer, start_daphne
from tests.support.processes import ServiceUnavailable
from tests.support.services import manage

pytestmark = pytest.mark.realservice

INFER = "/inference.GRPCInferenceService/ModelInfer"


@dataclass
class Servers:
    """The platform's process, and the address of its gRPC port."""

    http: DaphneServer
    grpc_address: str


@pytest.fixture(scope="module")
def server(demo_data, tmp_path_factory) -> Iterator[Servers]:
    port = free_port()
    try:
        http = start_daphne(tmp_path_factory.mktemp("daphne-grpc"), demo=demo_data,
                            extra_args=["--grpc-port", str(port)])
    except ServiceUnavailable as exc:
        pytest.fail(f"Could not start the platform with --grpc-port: {exc}", pytrace=False)
    yield Servers(http, f"127.0.0.1:{port}")
    http.stop()


@pytest.fixture(scope="module")
def keys(server):
    def create(name, *args):
        return manage("create_api_key", name, *args, env=server.http.env).stdout.strip()

    return {"all": create("grpc-all"), "iris-only": create("grpc-iris", "--models", "iris"),
            "slow": create("grpc-slow", "--rate", "1")}


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def client(server: Servers) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.grpc_address)


def fp64_inputs(rows: np.ndarray, features: list[str] | None = None) -> list[triton.InferInput]:
    """One [N, F] tensor, or with ``features`` one [N] tensor per feature."""
    if features is None:
        matrix = triton.InferInput("input", list(rows.shape), "FP64")
        matrix.set_data_from_numpy(rows)
        return [matrix]
    columns = []
    for j, feature in enumerate(features):
        column = triton.InferInput(feature, [rows.shape[0]], "FP64")
        column.set_data_from_numpy(np.ascontiguousarray(rows[:, j]))
        columns.append(column)
    return columns


def assert_same_outputs(result: Any, expected: list[dict[str, Any]], *, exact: bool = True) -> None:
    """A tritonclient result holds the WebSocket protocol's outputs for the same rows.

    Not ``exact`` for requests that may share a batch: a model's arithmetic
    over more rows may round the last bits differently (a float32 Keras model
    by a few units in the last place, depending on the CPU's kernels).
    """
    if "label" in expected[0]:
        assert [label.decode() for label in result.as_numpy("label")] == [row["label"] for row in expected]
        classes = list(expected[0]["probabilities"])
        want = [[row["probabilities"][c] for c in classes] for row in expected]
        got = result.as_numpy("probabilities")
    else:
        want = [row["value"] for row in expected]
        got = result.as_numpy("value")
    if exact:
        assert got.tolist() == want
    else:
        np.testing.assert_allclose(got, want, rtol=4 * np.finfo(np.float32).eps, atol=1e-9)


def stream(server: Servers, key: str, requests: list[dict[str, Any]], timeout_s: float = 30.0) -> list[Any]:
    """Send ``requests`` (infer keyword arguments) on one stream; the results and errors, in arrival order."""
    arrived: queue.Queue[Any] = queue.Queue()
    grpc_client = client(server)
    try:
        grpc_client.start_stream(callback=lambda result, error: arrived.put(error if error else result),
                                 headers=auth(key))
        for kwargs in requests:
            grpc_client.async_stream_infer(**kwargs)
        answers = [arrived.get(timeout=timeout_s) for _ in requests]
        grpc_client.stop_stream()
    finally:
        grpc_client.close()
    return answers


@pytest.mark.parametrize("name", DEMO_MODELS)
async def test_unary_and_stream_get_the_websocket_protocols_outputs_for_every_demo_model(server, keys, name):
    ready, _ = await websocket_reply(server.http, keys["all"], {"type": "ping", "id": 0})
    features = ready["models"][name]["inputs"]
    rows = np.random.default_rng(11).uniform(0, 5, size=(3, len(features))).round(3)
    _, ws_reply = await websocket_reply(server.http, keys["all"], {"id": "ws", "model": name, "inputs": rows.tolist()})
    expected = ws_reply["outputs"]

    def both() -> tuple[list[Any], list[Any]]:
        grpc_client = client(server)
        try:
            unary = [grpc_client.infer(name, inputs, request_id=f"unary-{name}", headers=auth(keys["all"]))
                     for inputs in (fp64_inputs(rows), fp64_inputs(rows, features))]
        finally:
            grpc_client.close()
        streamed = stream(server, keys["all"], [
            {"model_name": name, "inputs": fp64_inputs(rows), "request_id": f"stream-{name}-{i}"} for i in range(3)])
        return unary, streamed

    unary, streamed = await asyncio.to_thread(both)
    for result in unary + streamed:
        response = result.get_response()
        assert response.model_name == name and response.model_version == str(ws_reply["version"])
        assert_same_outputs(result, expected, exact=result in unary)
    assert [r.get_response().id for r in unary] == [f"unary-{name}"] * 2
    assert sorted(r.get_response().id for r in streamed) == [f"stream-{name}-{i}" for i in range(3)]


def test_metadata_and_readiness_match_the_registry(server, keys):
    status, _, catalog = post(server.http, "/v2", None)
    assert status == 200
    grpc_client = client(server)
    headers = auth(keys["all"])
    try:
        assert grpc_client.is_server_live() and grpc_client.is_server_ready()
        server_metadata = grpc_client.get_server_metadata(as_json=True)
        assert server_metadata["name"] == catalog["name"] == "channels-inference-platform"
        for name in DEMO_MODELS:
            _, _, http_meta = post(server.http, f"/v2/models/{name}", None, keys["all"])
            assert grpc_client.is_model_ready(name, headers=headers)
            assert grpc_client.is_model_ready(name, http_meta["versions"][0], headers=headers)
            meta = grpc_client.get_model_metadata(name, headers=headers, as_json=True)
            assert meta["name"] == name and meta["versions"] == http_meta["versions"]
            assert [(i["name"], i["datatype"], [int(d) for d in i["shape"]]) for i in meta["inputs"]] == [
                (i["name"], i["datatype"], i["shape"]) for i in http_meta["inputs"]]
            assert [o["name"] for o in meta["outputs"]] == [o["name"] for o in http_meta["outputs"]]
        with pytest.raises(InferenceServerException) as caught:
            grpc_client.get_model_metadata("nope", headers=headers)
        assert caught.value.status() == "StatusCode.NOT_FOUND" and "no model named 'nope'" in caught.value.message()
    finally:
        grpc_client.close()


def iris(rows: list[list[float]], datatype: str = "FP64") -> list[triton.InferInput]:
    tensor = triton.InferInput("input", [len(rows), len(rows[0])], datatype)
    tensor.set_data_from_numpy(np.array(rows, dtype=triton.triton_to_np_dtype(datatype)))
    return [tensor]


def bytes_input() -> list[triton.InferInput]:
    tensor = triton.InferInput("input", [1, 4], "BYTES")
    tensor.set_data_from_numpy(np.array([[b"a", b"b", b"c", b"d"]], dtype=np.object_))
    return [tensor]


@pytest.mark.parametrize(("model", "inputs", "key", "code", "message"), [
    ("iris", iris([IRIS_ROW]), None, "UNAUTHENTICATED", "Send an API key"),
    ("iris", iris([IRIS_ROW]), "not-a-key", "UNAUTHENTICATED", "not valid"),
    ("diabetes", iris([[0.0] * 10]), "iris-only", "PERMISSION_DENIED", "may not use the model"),
    ("nope", iris([IRIS_ROW]), "all", "NOT_FOUND", "no model named 'nope'"),
    ("iris", bytes_input(), "all", "INVALID_ARGUMENT", "datatype 'BYTES' is not supported"),
    ("iris", iris([IRIS_ROW[:3]]), "all", "INVALID_ARGUMENT", "expected shape [N, 4], got [1, 3]"),
    ("iris", iris([[5.1, float("nan"), 1.4, 0.2]]), "all", "INVALID_ARGUMENT", "not a finite number"),
    ("iris", iris([[5.1, float("inf"), 1.4, 0.2]], "FP32"), "all", "INVALID_ARGUMENT", "not a finite number"),
])
def test_bad_requests_get_their_grpc_code_and_a_clear_message(server, keys, model, inputs, key, code, message):
    grpc_client = client(server)
    try:
        with pytest.raises(InferenceServerException) as caught:
            grpc_client.infer(model, inputs, headers=auth(keys.get(key, key)) if key else None)
        assert caught.value.status() == f"StatusCode.{code}" and message in caught.value.message()
        assert grpc_client.infer("iris", iris([IRIS_ROW]), headers=auth(keys["all"])).as_numpy("label") is not None
    finally:
        grpc_client.close()


def test_an_unknown_version_is_not_found(server, keys):
    grpc_client = client(server)
    try:
        with pytest.raises(InferenceServerException) as caught:
            grpc_client.infer("iris", iris([IRIS_ROW]), model_version="99", headers=auth(keys["all"]))
        assert caught.value.status() == "StatusCode.NOT_FOUND" and "no version 99" in caught.value.message()
    finally:
        grpc_client.close()


def test_a_key_past_its_rate_gets_resource_exhausted_with_retry_after(server, keys):
    with grpc.insecure_channel(server.grpc_address) as channel:
        call = channel.unary_unary(INFER)
        request = raw_request()
        codes = []
        for _ in range(3):
            try:
                call.with_call(request, metadata=list(auth(keys["slow"]).items()), timeout=30)
                codes.append((grpc.StatusCode.OK, {}))
            except grpc.RpcError as exc:
                codes.append((exc.code(), dict(exc.trailing_metadata() or ())))
    limited = [trailers for code, trailers in codes if code == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert limited and all(int(trailers["retry-after"]) >= 1 for trailers in limited), codes


def raw_request(rid: str = "raw") -> bytes:
    """An iris ModelInferRequest as tritonclient serializes it."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="iris", id=rid)
    tensor = request.inputs.add(name="input", datatype="FP64", shape=[1, 4])
    tensor.contents.fp64_contents.extend(IRIS_ROW)
    return request.SerializeToString()


@pytest.mark.parametrize(("payload", "code", "message"), [
    # Field 1 (model_name) says 1000 bytes follow; 3 do.
    (b"\x0a\xe8\x07abc", grpc.StatusCode.INVALID_ARGUMENT, "not a valid inference.ModelInferRequest"),
    (b"\x0a" * 5 * 1024 * 1024, grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
])
def test_malformed_and_oversized_messages_get_their_code_and_the_server_keeps_serving(
        server, keys, payload, code, message):
    with grpc.insecure_channel(server.grpc_address) as channel:
        call = channel.unary_unary(INFER)
        with pytest.raises(grpc.RpcError) as caught:
            call(payload, metadata=list(auth(keys["all"]).items()), timeout=30)
        assert caught.value.code() == code and message in caught.value.details()
        answer = call(raw_request(), metadata=list(auth(keys["all"]).items()), timeout=30)
    from tritonclient.grpc import service_pb2

    reply = service_pb2.ModelInferResponse.FromString(answer)
    assert reply.id == "raw" and [o.name for o in reply.outputs] == ["label", "probabilities"]


def test_a_stream_answers_errors_in_band_and_goes_on(server, keys):
    answers = stream(server, keys["all"], [
        {"model_name": "iris", "inputs": iris([IRIS_ROW[:3]]), "request_id": "bad"},
        {"model_name": "nope", "inputs": iris([IRIS_ROW]), "request_id": "unknown"},
        {"model_name": "iris", "inputs": iris([IRIS_ROW]), "request_id": "good"},
    ])
    errors = sorted(str(a) for a in answers if isinstance(a, InferenceServerException))
    results = [a for a in answers if not isinstance(a, InferenceServerException)]
    assert len(errors) == 2 and "INVALID_ARGUMENT: Input 'input': expected shape [N, 4]" in errors[0]
    assert "NOT_FOUND: There is no model named 'nope'" in errors[1]
    assert [r.get_response().id for r in results] == ["good"]


def logged_since(server: Servers, before: set[str], request_ids: set[str], timeout_s: float = 30.0) -> list[dict]:
    """The records of ``request_ids`` not in ``before``, once every one of them is in the log (or at the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = [r for r in stored(server.http) if r["event_id"] not in before and r["request_id"] in request_ids]
        if {r["request_id"] for r in records} >= request_ids or time.monotonic() > deadline:
            time.sleep(0.5)  # a record written twice would show up now
            return [r for r in stored(server.http) if r["event_id"] not in before and r["request_id"] in request_ids]
        time.sleep(0.2)


async def test_grpc_http_and_websocket_requests_share_batches_and_each_is_logged_once(server, keys):
    import websockets

    before = {record["event_id"] for record in stored(server.http)}
    ws_ids = [f"trio-ws-{i}" for i in range(300)]
    grpc_ids = [f"trio-grpc-{i}" for i in range(30)]
    http_ids = [f"trio-http-{i}" for i in range(30)]
    grpc_batches: list[int] = []
    http_batches: list[int] = []

    def grpc_requests() -> None:
        grpc_client = client(server)
        try:
            for rid in grpc_ids:  # one at a time: a batch of more than one row holds another protocol's request
                result = grpc_client.infer("iris", iris([IRIS_ROW]), request_id=rid, headers=auth(keys["all"]))
                grpc_batches.append(result.get_response().parameters["batch_size"].int64_param)
        finally:
            grpc_client.close()

    def http_requests() -> None:
        for rid in http_ids:
            status, _, reply = post(server.http, "/v2/models/iris/infer", infer_body([IRIS_ROW], rid=rid), keys["all"])
            assert status == 200, reply
            http_batches.append(reply["parameters"]["batch_size"])

    async with websockets.connect(server.http.ws_url + "/ws/v1/predict/", additional_headers=bearer(keys["all"])) as ws:
        await ws.recv()
        others = asyncio.gather(asyncio.to_thread(grpc_requests), asyncio.to_thread(http_requests))
        ws_replies = []
        for start in range(0, len(ws_ids), WINDOW):
            for rid in ws_ids[start:start + WINDOW]:
                await ws.send(json.dumps({"id": rid, "model": "iris", "inputs": [IRIS_ROW]}))
            ws_replies += [json.loads(await ws.recv()) for _ in ws_ids[start:start + WINDOW]]
        await others
    assert all(reply["type"] == "prediction" for reply in ws_replies), ws_replies
    assert max(grpc_batches) > 1 and max(http_batches) > 1, (grpc_batches, http_batches)

    records = await asyncio.to_thread(logged_since, server, before, set(ws_ids + grpc_ids + http_ids))
    by_id = assert_each_request_once(records, ws_ids + grpc_ids + http_ids)
    assert all(by_id[rid]["outcome"] == "ok" for rid in grpc_ids)
    came_by = protocols(server, set(by_id))
    assert {came_by[rid] for rid in grpc_ids} == {"grpc"} and {came_by[rid] for rid in http_ids} == {"http"}
    assert {came_by[rid] for rid in ws_ids} == {"websocket"}


def protocols(server: Servers, request_ids: set[str]) -> dict[str, str]:
    """The protocol each request's record says it came by (the server's SQLite database)."""
    connection = sqlite3.connect(f"file:{server.http.data_dir / 'platform.sqlite3'}?mode=ro", uri=True, timeout=30)
    try:
        rows = connection.execute("SELECT request_id, protocol FROM monitoring_predictionrecord").fetchall()
    finally:
        connection.close()
    return {rid: protocol for rid, protocol in rows if rid in request_ids}


async def test_sigterm_answers_the_streams_accepted_requests_then_stops_grpc(start_daphne):
    port = free_port()
    server = start_daphne(env={"PLATFORM_REQUIRE_API_KEY": "0"}, extra_args=["--grpc-port", str(port)])
    servers = Servers(server, f"127.0.0.1:{port}")
    rows = np.tile(np.arange(64, dtype=np.float64) % 16, (32, 1))
    arrived: queue.Queue[Any] = queue.Queue()

    def drained() -> list[Any]:
        grpc_client = client(servers)
        try:
            grpc_client.start_stream(callback=lambda result, error: arrived.put(error if error else result))
            for i in range(100):
                grpc_client.async_stream_infer("digits", fp64_inputs(rows), request_id=str(i))
            time.sleep(0.2)  # the requests are on their way; the drain begins while most are queued
            server.process.send_signal(signal.SIGTERM)
            return [arrived.get(timeout=30) for _ in range(100)]
        finally:
            grpc_client.close()

    answers = await asyncio.to_thread(drained)
    predictions = [a for a in answers if not isinstance(a, InferenceServerException)]
    refusals = [str(a) for a in answers if isinstance(a, InferenceServerException)]
    assert predictions, refusals
    assert all("UNAVAILABLE: The server is shutting down" in refusal for refusal in refusals), refusals
    assert len({p.get_response().id for p in predictions}) == len(predictions)
    assert await asyncio.to_thread(server.process.wait, 30) == 0
    assert "Serving the Open Inference Protocol over gRPC" in server.log_tail(400)


@pytest.mark.parametrize("datatype", ["FP32", "FP16", "INT32"])
def test_raw_inputs_of_other_datatypes_answer_as_their_values_in_json(server, keys, datatype):
    values = np.array([IRIS_ROW, [6.7, 3.0, 5.2, 2.3]]).astype(triton.triton_to_np_dtype(datatype))
    status, _, reply = post(server.http, "/v2/models/iris/infer", infer_body(values.astype(np.float64).tolist()),
                            keys["all"])
    assert status == 200, reply
    want = {o["name"]: o["data"] for o in reply["outputs"]}
    grpc_client = client(server)
    try:
        result = grpc_client.infer("iris", iris(values.tolist(), datatype), headers=auth(keys["all"]))
    finally:
        grpc_client.close()
    assert [label.decode() for label in result.as_numpy("label")] == want["label"]
    assert result.as_numpy("probabilities").ravel().tolist() == want["probabilities"]
