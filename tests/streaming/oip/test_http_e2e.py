"""The Open Inference Protocol through a real daphne process, with tritonclient and plain HTTP."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
import websockets
from tritonclient.utils import InferenceServerException

from tests.monitoring.test_prediction_log_e2e import assert_each_request_once, stored
from tests.support.services import manage

DEMO_MODELS = ["iris", "breast-cancer", "diabetes", "digits"]
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
#: WebSocket requests sent before their replies are read.
WINDOW = 16


@pytest.fixture(scope="module")
def server(daphne_server):
    return daphne_server


@pytest.fixture(scope="module")
def keys(server):
    def create(name, *args):
        return manage("create_api_key", name, *args, env=server.env).stdout.strip()

    return {"all": create("oip-all"), "iris-only": create("oip-iris", "--models", "iris"),
            "slow": create("oip-slow", "--rate", "1")}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def triton_client(server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=f"127.0.0.1:{server.port}", network_timeout=30.0)


def post(server, path: str, body: bytes | str, key: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], dict[str, Any]]:
    """One request with http.client: status, headers (lower-case names), JSON body."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        all_headers = {"Content-Type": "application/json", **(bearer(key) if key else {}), **(headers or {})}
        connection.request("POST" if body is not None else "GET", path,
                           body=body.encode() if isinstance(body, str) else body, headers=all_headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(response.read())
    finally:
        connection.close()


def infer_body(rows: list[list[float]], rid: str = "r", datatype: str = "FP64", **fields: Any) -> str:
    return json.dumps({"id": rid, "inputs": [{"name": "input", "shape": [len(rows), len(rows[0])],
                                              "datatype": datatype, "data": rows}], **fields})


async def websocket_reply(server, key: str, frame: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    async with websockets.connect(server.ws_url + "/ws/v1/predict/", additional_headers=bearer(key)) as ws:
        ready = json.loads(await ws.recv())
        await ws.send(json.dumps(frame))
        return ready, json.loads(await ws.recv())


@pytest.mark.parametrize("name", DEMO_MODELS)
async def test_tritonclient_gets_the_websocket_protocols_outputs_for_every_demo_model(server, keys, name):
    ready, _ = await websocket_reply(server, keys["all"], {"type": "ping", "id": 0})
    features = ready["models"][name]["inputs"]
    rows = np.random.default_rng(7).uniform(0, 5, size=(3, len(features))).round(3)
    _, ws_reply = await websocket_reply(server, keys["all"], {"id": "ws", "model": name, "inputs": rows.tolist()})

    matrix = triton.InferInput("input", list(rows.shape), "FP64")
    matrix.set_data_from_numpy(rows, binary_data=False)
    per_feature = []
    for j, feature in enumerate(features):
        column = triton.InferInput(feature, [rows.shape[0]], "FP64")
        column.set_data_from_numpy(np.ascontiguousarray(rows[:, j]), binary_data=False)
        per_feature.append(column)
    def infer_both() -> list[Any]:
        # tritonclient.http runs on gevent: one client lives and dies in one thread.
        client = triton_client(server)
        try:
            return [client.infer(name, inputs, request_id=f"http-{name}", headers=bearer(keys["all"]))
                    for inputs in ([matrix], per_feature)]
        finally:
            client.close()

    results = await asyncio.to_thread(infer_both)

    expected = ws_reply["outputs"]
    for result in results:
        response = result.get_response()
        assert response["id"] == f"http-{name}" and response["model_name"] == name
        assert response["model_version"] == str(ws_reply["version"])
        if "label" in expected[0]:
            labels = [label.decode() if isinstance(label, bytes) else label for label in result.as_numpy("label")]
            assert labels == [row["label"] for row in expected]
            classes = list(expected[0]["probabilities"])
            want = [[row["probabilities"][c] for c in classes] for row in expected]
            assert result.as_numpy("probabilities").tolist() == want
        else:
            assert result.as_numpy("value").tolist() == [row["value"] for row in expected]


async def test_metadata_and_readiness_match_the_registry(server, keys):
    ready, _ = await websocket_reply(server, keys["all"], {"type": "ping", "id": 0})
    client = triton_client(server)
    headers = bearer(keys["all"])
    try:
        assert client.is_server_live() and client.is_server_ready()
        server_metadata = client.get_server_metadata()
        assert server_metadata["name"] == "channels-inference-platform"
        assert server_metadata["extensions"] == ["binary_tensor_data"]
        for name, catalog in ready["models"].items():
            assert client.is_model_ready(name, headers=headers)
            assert client.is_model_ready(name, str(catalog["version"]), headers=headers)
            meta = client.get_model_metadata(name, headers=headers)
            assert meta["name"] == name and str(catalog["version"]) in meta["versions"]
            assert [i["name"] for i in meta["inputs"]] == catalog["inputs"]
            assert all(i["shape"] == [-1] and i["datatype"] == "FP64" for i in meta["inputs"])
            outputs = {o["name"] for o in meta["outputs"]}
            assert outputs in ({"label", "probabilities"}, {"value"})
        with pytest.raises(InferenceServerException, match="no model named 'nope'"):
            client.get_model_metadata("nope", headers=headers)
    finally:
        client.close()


@pytest.mark.parametrize(("path", "body", "key", "status", "message"), [
    ("/v2/models/iris/infer", infer_body([IRIS_ROW]), None, 401, "Send an API key"),
    ("/v2/models/iris/infer", infer_body([IRIS_ROW]), "not-a-key", 401, "not valid"),
    ("/v2/models/diabetes/infer", infer_body([[0.0] * 10]), "iris-only", 403, "may not use the model"),
    ("/v2/models/nope/infer", infer_body([IRIS_ROW]), "all", 404, "no model named 'nope'"),
    ("/v2/models/iris/versions/99/infer", infer_body([IRIS_ROW]), "all", 404, "no version 99"),
    ("/v2/models/iris/infer", infer_body([IRIS_ROW], datatype="BYTES"), "all", 400, "datatype 'BYTES'"),
    ("/v2/models/iris/infer", infer_body([IRIS_ROW[:3]]), "all", 400, "expected shape [N, 4], got [1, 3]"),
    ("/v2/models/iris/infer", infer_body([[5.1, float("nan"), 1.4, 0.2]]), "all", 400, "not a finite number"),
    ("/v2/models/iris/infer", '{"inputs": [', "all", 400, "not valid JSON"),
    ("/v2/models/iris/infer", infer_body([IRIS_ROW], outputs=[{"name": "value"}]), "all", 400,
     "Unknown output 'value'"),
])
def test_bad_requests_get_their_status_and_a_json_error(server, keys, path, body, key, status, message):
    code, _, reply = post(server, path, body, keys.get(key, key))
    assert code == status and message in reply["error"], reply


def test_the_outputs_filter_and_the_id_are_honoured(server, keys):
    status, _, reply = post(server, "/v2/models/iris/infer",
                            infer_body([IRIS_ROW], rid="abc", outputs=[{"name": "label"}]), keys["all"])
    assert status == 200 and reply["id"] == "abc"
    assert [o["name"] for o in reply["outputs"]] == ["label"] and reply["outputs"][0]["shape"] == [1]


def test_a_key_past_its_rate_gets_429_with_retry_after(server, keys):
    answers = [post(server, "/v2/models/iris/infer", infer_body([IRIS_ROW]), keys["slow"]) for _ in range(3)]
    limited = [headers for status, headers, _ in answers if status == 429]
    assert limited and all(int(headers["retry-after"]) >= 1 for headers in limited)


def test_a_100_mb_body_gets_413_and_the_server_keeps_serving(server, keys):
    size = 100 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", server.port), timeout=120) as sock:
        sock.sendall((f"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {keys['all']}\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n").encode())
        chunk = b" " * (1024 * 1024)
        try:
            for _ in range(100):
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before the whole body is sent
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    status, _, reply = post(server, "/v2/models/iris/infer", infer_body([IRIS_ROW]), keys["all"])
    assert status == 200 and reply["outputs"][0]["data"], reply


def logged_since(server, before: set[str], request_ids: set[str], timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """The records of ``request_ids`` not in ``before``, once every one of them is in the log (or at the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = [r for r in stored(server) if r["event_id"] not in before and r["request_id"] in request_ids]
        if {r["request_id"] for r in records} >= request_ids or time.monotonic() > deadline:
            # A moment more: a record written twice would show up now.
            time.sleep(0.5)
            return [r for r in stored(server) if r["event_id"] not in before and r["request_id"] in request_ids]
        time.sleep(0.2)


async def test_http_and_websocket_clients_share_batches_and_every_request_is_logged_once(server, keys):
    before = {record["event_id"] for record in stored(server)}
    ws_ids = [f"mix-ws-{i}" for i in range(300)]
    http_ids = [f"mix-http-{i}" for i in range(30)]
    http_batches: list[int] = []

    def http_client() -> None:
        # One request at a time: a batch larger than one row holds WebSocket requests.
        for rid in http_ids:
            status, _, reply = post(server, "/v2/models/iris/infer", infer_body([IRIS_ROW], rid=rid), keys["all"])
            assert status == 200, reply
            http_batches.append(reply["parameters"]["batch_size"])

    async with websockets.connect(server.ws_url + "/ws/v1/predict/", additional_headers=bearer(keys["all"])) as ws:
        await ws.recv()
        http_done = asyncio.create_task(asyncio.to_thread(http_client))
        ws_replies = []
        # Windows of requests, within the connection's limit of requests in flight.
        for start in range(0, len(ws_ids), WINDOW):
            for rid in ws_ids[start:start + WINDOW]:
                await ws.send(json.dumps({"id": rid, "model": "iris", "inputs": [IRIS_ROW]}))
            ws_replies += [json.loads(await ws.recv()) for _ in ws_ids[start:start + WINDOW]]
        await http_done
    assert all(reply["type"] == "prediction" for reply in ws_replies), ws_replies
    assert max(http_batches) > 1, http_batches

    records = await asyncio.to_thread(logged_since, server, before, set(ws_ids + http_ids))
    by_id = assert_each_request_once(records, ws_ids + http_ids)
    assert by_id[http_ids[0]]["outcome"] == "ok" and by_id[http_ids[0]]["batch_size"] >= 1


def test_binary_tensor_data_in_and_out_as_tritonclient_sends_it_by_default(server, keys):
    rows = np.array([IRIS_ROW, [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    status, _, json_reply = post(server, "/v2/models/iris/infer",
                                 infer_body(rows.astype(np.float64).tolist(), rid="json"), keys["all"])
    assert status == 200, json_reply
    want = {o["name"]: o["data"] for o in json_reply["outputs"]}
    half = rows.astype(np.float16)
    status, _, half_reply = post(server, "/v2/models/iris/infer",
                                 infer_body(half.astype(np.float64).tolist(), rid="json16"), keys["all"])
    assert status == 200, half_reply

    def binary_infers() -> list[Any]:
        client = triton_client(server)
        try:
            results = []
            for values, datatype in ((rows, "FP32"), (half, "FP16")):
                tensor = triton.InferInput("input", list(values.shape), datatype)
                tensor.set_data_from_numpy(values)  # binary_data=True, tritonclient's default
                results.append(client.infer("iris", [tensor], headers=bearer(keys["all"])))
            return results
        finally:
            client.close()

    as_fp32, as_fp16 = binary_infers()
    for result, expected in ((as_fp32, want), (as_fp16, {o["name"]: o["data"] for o in half_reply["outputs"]})):
        outputs = result.get_response()["outputs"]
        assert all(o["parameters"]["binary_data_size"] > 0 for o in outputs)  # the values came as binary
        assert [label.decode() for label in result.as_numpy("label")] == expected["label"]
        assert result.as_numpy("probabilities").ravel().tolist() == expected["probabilities"]


@pytest.mark.parametrize(("headers", "body", "message"), [
    ({"Inference-Header-Content-Length": "9999"}, infer_body([IRIS_ROW]), "Inference-Header-Content-Length must be"),
    ({"Inference-Header-Content-Length": "0"}, "", "not valid JSON"),
])
def test_a_bad_binary_request_gets_400(server, keys, headers, body, message):
    status, _, reply = post(server, "/v2/models/iris/infer", body, keys["all"], headers=headers)
    assert status == 400 and message in reply["error"], reply
