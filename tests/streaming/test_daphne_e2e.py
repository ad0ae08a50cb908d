"""The prediction stream through a real daphne process and a real WebSocket client library."""

from __future__ import annotations

import asyncio
import json
import signal

import msgpack
import numpy as np
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support.services import manage

from .helpers import assert_outputs_match, framework_predictions

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture(scope="module")
def server(daphne_server):
    return daphne_server


@pytest.fixture(scope="module")
def keys(server):
    """Raw API keys created with the operators' command against the server's database."""

    def create(name, *args):
        return manage("create_api_key", name, *args, env=server.env).stdout.strip()

    return {
        "all": create("e2e-all"),
        "iris-only": create("e2e-iris", "--models", "iris"),
        "slow": create("e2e-slow", "--rate", "2"),
    }


def connect(server, path="/ws/v1/predict/", key=None, **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return websockets.connect(server.ws_url + path, additional_headers=headers, max_size=2**24, **kwargs)


async def ready(ws):
    message = json.loads(await ws.recv())
    assert message["type"] == "ready", message
    return message


async def request(ws, frame):
    await ws.send(json.dumps(frame))
    return json.loads(await ws.recv())


def framework_outputs(server, demo_data, name, rows):
    """What the model's own framework predicts for ``rows``, from the artifact in the server's model store."""
    from django.core import serializers

    objects = [d.object for d in serializers.deserialize("json", demo_data.registry_fixture.read_text())]
    mlmodel = next(o for o in objects if type(o).__name__ == "MLModel" and o.name == name)
    version = next(o for o in objects if type(o).__name__ == "ModelVersion" and o.model_id == mlmodel.pk)
    path = server.data_dir / "models" / version.artifact
    return framework_predictions(path, version.framework, version.metadata.get("classes"), rows)


@pytest.mark.parametrize("name", ["iris", "breast-cancer", "diabetes", "digits"])
async def test_every_demo_model_answers_like_the_model_itself(server, keys, demo_data, name):
    ready_models = None
    async with connect(server, key=keys["all"]) as ws:
        ready_models = (await ready(ws))["models"]
        n = len(ready_models[name]["inputs"])
        rows = np.random.default_rng(3).uniform(0, 5, size=(4, n)).round(3).tolist()
        reply = await request(ws, {"id": name, "model": name, "inputs": rows})
    assert reply["type"] == "prediction" and reply["id"] == name, reply
    expected = await asyncio.to_thread(framework_outputs, server, demo_data, name, rows)
    assert_outputs_match(reply["outputs"], expected)


async def test_fifty_concurrent_clients_share_batches(server, keys):
    async def client(i):
        async with connect(server, "/ws/v1/predict/iris/", key=keys["all"]) as ws:
            await ready(ws)
            for j in range(10):
                await ws.send(json.dumps({"id": f"{i}-{j}", "inputs": [[4.5 + i / 50, 3.0, 1.4, 0.2]]}))
            return [json.loads(await ws.recv()) for _ in range(10)]

    results = await asyncio.gather(*(client(i) for i in range(50)))
    replies = [r for rs in results for r in rs]
    assert all(r["type"] == "prediction" for r in replies)
    assert {r["id"] for r in replies} == {f"{i}-{j}" for i in range(50) for j in range(10)}
    assert max(r["batch_size"] for r in replies) > 1


async def test_replies_beyond_the_socket_buffers_arrive_whole_to_a_slow_reader(server, keys):
    # A client that stops reading: the server's socket fills, its sends are
    # partial and the rest waits in the server's buffer, behind which later
    # replies queue. Every reply must still arrive whole, once, uncorrupted.
    rows = [[4.3 + (i % 36) / 10, 3.0, 1.1 + (i % 59) / 10, 0.1 + (i % 25) / 10] for i in range(1024)]
    n = 120  # about 100 KB of reply each: far more than loopback buffers hold
    async with connect(server, "/ws/v1/predict/iris/", key=keys["all"], max_queue=1) as ws:
        await ready(ws)
        for i in range(n):
            await ws.send(json.dumps({"id": i, "inputs": rows}))
        await asyncio.sleep(1.0)  # the server answers into a full socket meanwhile
        replies = [json.loads(await asyncio.wait_for(ws.recv(), 30)) for _ in range(n)]
    assert sorted(r["id"] for r in replies) == list(range(n))
    assert all(r["type"] == "prediction" and len(r["outputs"]) == len(rows) for r in replies)
    assert all(r["outputs"] == replies[0]["outputs"] for r in replies)


async def test_errors_keep_the_connection_open(server, keys):
    async with connect(server, key=keys["all"]) as ws:
        await ready(ws)
        cases = [
            ("{oops", "invalid_json", None),
            (json.dumps({"id": "a", "model": "iris"}), "invalid_request", "a"),
            (json.dumps({"id": "b", "type": "dance"}), "invalid_request", "b"),
            (json.dumps({"id": "c", "model": "iris", "inputs": [[1, 2, 3]]}), "invalid_input", "c"),
            (json.dumps({"id": "d", "model": "iris", "inputs": [[1, 2, 3, "4"]]}), "invalid_input", "d"),
            (json.dumps({"id": "e", "model": "ghost", "inputs": [[1]]}), "unknown_model", "e"),
        ]
        for frame, code, rid in cases:
            await ws.send(frame)
            reply = json.loads(await ws.recv())
            assert reply["type"] == "error" and reply["error"]["code"] == code and reply["id"] == rid, reply
        good = await request(ws, {"id": "ok", "model": "iris", "inputs": [IRIS_ROW]})
        assert good["type"] == "prediction" and good["outputs"][0]["label"] == "setosa"


async def test_key_scope_and_rate_limit(server, keys):
    async with connect(server, key=keys["iris-only"]) as ws:
        assert list((await ready(ws))["models"]) == ["iris"]
        reply = await request(ws, {"id": 1, "model": "digits", "inputs": [[0] * 64]})
        assert reply["error"]["code"] == "unknown_model"
    async with connect(server, "/ws/v1/predict/iris/", key=keys["slow"]) as ws:
        await ready(ws)
        codes = []
        for i in range(5):
            codes.append((await request(ws, {"id": i, "inputs": [IRIS_ROW]}))["type"])
        assert codes.count("prediction") == 2 and codes.count("error") == 3


async def test_bad_key_and_unknown_url_model_close_with_protocol_codes(server, keys):
    async with connect(server, key="pk_wrong") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 4401
    async with connect(server, "/ws/v1/predict/ghost/", key=keys["all"]) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 4404


async def test_auth_message_for_browsers(server, keys):
    async with connect(server, "/ws/v1/predict/iris/") as ws:
        await ws.send(json.dumps({"type": "auth", "token": keys["all"]}))
        await ready(ws)
        assert (await request(ws, {"id": 1, "inputs": [IRIS_ROW]}))["type"] == "prediction"


async def test_disallowed_origin_gets_http_403(server, keys):
    with pytest.raises(InvalidStatus) as refused:
        async with connect(server, key=keys["all"], origin="https://evil.example"):
            pass
    assert refused.value.response.status_code == 403


async def test_oversized_frame_closes_1009(server, keys):
    async with connect(server, "/ws/v1/predict/iris/", key=keys["all"]) as ws:
        await ready(ws)
        await ws.send(json.dumps({"id": 1, "inputs": [IRIS_ROW] * 200_000}))  # ~5 MB
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 1009


async def test_messagepack_matches_json(server, keys):
    rows = [IRIS_ROW, [6.2, 2.9, 4.3, 1.3]]
    async with connect(server, "/ws/v1/predict/iris/", key=keys["all"]) as ws:
        await ready(ws)
        as_json = await request(ws, {"id": "j", "inputs": rows})
        await ws.send(msgpack.packb({"id": "m", "inputs": rows}))
        raw = await ws.recv()
    assert isinstance(raw, bytes)
    as_msgpack = msgpack.unpackb(raw)
    assert as_msgpack["id"] == "m" and as_msgpack["outputs"] == as_json["outputs"]


async def test_bad_request_inside_busy_stream(server, keys):
    async with connect(server, "/ws/v1/predict/iris/", key=keys["all"]) as ws:
        await ready(ws)
        for i in range(200):
            row = [1, 2, None, 4] if i == 99 else [4.0 + (i % 30) / 10, 3.0, 1.4, 0.2]
            await ws.send(json.dumps({"id": i, "inputs": [row]}))
        replies = {}
        for _ in range(200):
            reply = json.loads(await ws.recv())
            replies[reply["id"]] = reply
    assert replies[99]["error"]["code"] == "invalid_input"
    assert all(replies[i]["type"] == "prediction" for i in range(200) if i != 99)


async def test_shutdown_answers_in_flight_requests_then_closes_1001(start_daphne):
    server = start_daphne(env={"PLATFORM_REQUIRE_API_KEY": "0"})
    async with connect(server, "/ws/v1/predict/digits/") as ws:
        await ready(ws)
        for i in range(100):
            await ws.send(json.dumps({"id": i, "inputs": [[float(i % 16)] * 64] * 32}))
        server.process.send_signal(signal.SIGTERM)
        answered = set()
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
                assert reply["type"] in ("prediction", "error"), reply
                answered.add(reply["id"])
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert answered == set(range(100))
    assert await asyncio.to_thread(server.process.wait, 30) == 0
