"""The prediction stream of PROTOCOL.md, driven through WebsocketCommunicator."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import msgpack
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.utils import timezone

from platform_core.asgi import application
from streaming.models import APIKey

from .helpers import (
    IRIS_ROW,
    assert_outputs_match,
    assert_still_serving,
    connected,
    dataset_rows,
    expect_error,
    framework_predictions,
    receive_all,
    record_rows,
    settle,
)

DEMO_MODELS = ["iris", "breast-cancer", "diabetes", "digits"]


# -- connection, authentication -----------------------------------------------------


async def test_ready_lists_models_limits_and_schemas(service, api_key, settings):
    async with connected(key=api_key(), expect_ready=False) as ws:
        ready = await ws.receive_json_from()
    assert ready["type"] == "ready"
    assert ready["protocol"] == 1
    assert ready["max_in_flight"] == settings.PLATFORM_MAX_IN_FLIGHT
    assert ready["max_rows"] == settings.PLATFORM_MAX_ROWS
    assert set(DEMO_MODELS) <= set(ready["models"])
    iris = ready["models"]["iris"]
    assert iris["version"] == 1
    assert iris["inputs"] == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    assert "setosa" in iris["outputs"]
    assert len(ready["models"]["digits"]["inputs"]) == 64


async def test_key_limited_to_some_models_sees_and_uses_only_those(service, api_key):
    async with connected(key=api_key(models=["iris"]), expect_ready=False) as ws:
        ready = await ws.receive_json_from()
        assert list(ready["models"]) == ["iris"]
        await ws.send_json_to({"id": 1, "model": "diabetes", "inputs": [[0.0] * 10]})
        reply = await expect_error(ws, "unknown_model", rid=1)
        assert "diabetes" in reply["error"]["message"]
        await assert_still_serving(ws)


@pytest.mark.parametrize("header", [b"Bearer pk_not-a-real-key", b"Basic abc"])
async def test_bad_bearer_key_closes_4401(service, header):
    ws = WebsocketCommunicator(application, "/ws/v1/predict/", headers=[(b"authorization", header)])
    await ws.connect()
    if header.startswith(b"Bearer"):
        assert await ws.receive_output(timeout=5) == {"type": "websocket.close", "code": 4401}
    else:  # not a bearer header at all: wait for an auth message instead
        await ws.send_json_to({"type": "auth", "token": "nope"})
        assert await ws.receive_output(timeout=5) == {"type": "websocket.close", "code": 4401}


async def test_revoked_and_expired_keys_close_4401(service, api_key):
    revoked = api_key("revoked")
    expired = api_key("expired", expires_at=timezone.now() - timedelta(minutes=1))
    await database_sync_to_async(lambda: APIKey.objects.get(name="revoked").revoke())()
    for raw in (revoked, expired):
        headers = [(b"authorization", f"Bearer {raw}".encode())]
        ws = WebsocketCommunicator(application, "/ws/v1/predict/", headers=headers)
        await ws.connect()
        assert await ws.receive_output(timeout=5) == {"type": "websocket.close", "code": 4401}


@pytest.mark.parametrize("change", ["revoke", "expire", "delete"])
async def test_a_key_revoked_or_expired_while_connected_closes_its_connections_4401(service, api_key, settings,
                                                                                 change):
    settings.PLATFORM_KEY_CHECK_INTERVAL_S = 0.2
    doomed, other = api_key("doomed"), api_key("other")
    async with connected(key=doomed) as first, connected(key=doomed) as second, connected(key=other) as bystander:
        await first.send_json_to({"id": 1, "model": "iris", "inputs": [IRIS_ROW]})
        assert (await first.receive_json_from(timeout=5))["type"] == "prediction"

        def apply():
            key = APIKey.objects.get(name="doomed")
            if change == "revoke":
                key.revoke()
            elif change == "expire":
                key.expires_at = timezone.now()
                key.save(update_fields=["expires_at"])
            else:
                key.delete()

        await database_sync_to_async(apply)()
        for ws in (first, second):
            assert await ws.receive_output(timeout=2) == {"type": "websocket.close", "code": 4401}
        await assert_still_serving(bystander)


async def test_auth_message_then_predict(service, api_key):
    raw = api_key()
    ws = WebsocketCommunicator(application, "/ws/v1/predict/iris/")
    connected_ok, _ = await ws.connect()
    assert connected_ok
    await ws.send_json_to({"id": 1, "inputs": [IRIS_ROW]})
    await expect_error(ws, "invalid_request", rid=1)
    await ws.send_json_to({"type": "auth", "token": raw})
    ready = await ws.receive_json_from()
    assert ready["type"] == "ready"
    await ws.send_json_to({"id": 2, "inputs": [IRIS_ROW]})
    reply = await ws.receive_json_from()
    assert reply["type"] == "prediction" and reply["outputs"][0]["label"] == "setosa"
    await ws.disconnect()


async def test_no_auth_message_within_timeout_closes_4401(service, settings):
    settings.PLATFORM_AUTH_TIMEOUT_S = 0.2
    ws = WebsocketCommunicator(application, "/ws/v1/predict/")
    await ws.connect()
    assert await ws.receive_output(timeout=3) == {"type": "websocket.close", "code": 4401}


async def test_unknown_model_in_url_closes_4404(service, api_key):
    ws = WebsocketCommunicator(application, "/ws/v1/predict/no-such-model/",
                               headers=[(b"authorization", f"Bearer {api_key()}".encode())])
    await ws.connect()
    assert await ws.receive_output(timeout=5) == {"type": "websocket.close", "code": 4404}


async def test_url_model_the_key_may_not_use_closes_4404(service, api_key):
    ws = WebsocketCommunicator(application, "/ws/v1/predict/diabetes/",
                               headers=[(b"authorization", f"Bearer {api_key(models=['iris'])}".encode())])
    await ws.connect()
    assert await ws.receive_output(timeout=5) == {"type": "websocket.close", "code": 4404}


async def test_disallowed_origin_is_refused_at_handshake(service, api_key):
    ws = WebsocketCommunicator(application, "/ws/v1/predict/",
                               headers=[(b"origin", b"https://evil.example"),
                                        (b"authorization", f"Bearer {api_key()}".encode())])
    connected_ok, _ = await ws.connect()
    assert not connected_ok


async def test_allowed_origin_and_missing_origin_are_accepted(service, api_key):
    raw = api_key()
    async with connected(key=raw, headers=[(b"origin", b"http://localhost:8000")]) as ws:
        await assert_still_serving(ws)
    async with connected(key=raw) as ws:
        await assert_still_serving(ws)


async def test_unknown_websocket_path_is_refused(service):
    ws = WebsocketCommunicator(application, "/ws/v2/whatever/")
    connected_ok, _ = await ws.connect()
    assert not connected_ok


async def test_authentication_can_be_turned_off_explicitly(service, settings):
    settings.PLATFORM_REQUIRE_API_KEY = False
    async with connected() as ws:
        await assert_still_serving(ws)


# -- predictions ------------------------------------------------------------------


@pytest.mark.parametrize("name", DEMO_MODELS)
async def test_every_demo_model_answers_with_its_own_prediction(service, api_key, name):
    from inference.artifacts import verify_checksum
    from inference.models import ModelVersion

    version = await database_sync_to_async(ModelVersion.objects.select_related("model").get)(model__name=name)
    rows = dataset_rows(name, 5)
    async with connected(key=api_key()) as ws:
        await ws.send_json_to({"id": f"{name}-1", "model": name, "inputs": rows})
        reply = await ws.receive_json_from(timeout=10)
    assert reply["type"] == "prediction", reply
    assert reply["id"] == f"{name}-1"
    assert reply["model"] == name and reply["version"] == 1
    expected = await asyncio.to_thread(framework_predictions, verify_checksum(version), version.framework,
                                       version.metadata.get("classes"), rows)
    assert_outputs_match(reply["outputs"], expected)
    if expected[1] is not None:
        for row in reply["outputs"]:
            assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert reply["batch_size"] >= 5
    timing = reply["timing"]
    assert timing["total_ms"] >= timing["queue_ms"] >= 0
    assert timing["total_ms"] >= timing["inference_ms"] > 0


async def test_named_feature_rows_in_any_order(service, api_key):
    features = service.entry("iris").schema.features
    named = dict(zip(reversed(features), reversed(IRIS_ROW), strict=True))
    async with connected("/ws/v1/predict/iris/", key=api_key()) as ws:
        await ws.send_json_to({"id": "list", "inputs": [IRIS_ROW]})
        await ws.send_json_to({"id": "named", "inputs": [named]})
        replies = await receive_all(ws, 2)
    assert replies["list"]["outputs"] == replies["named"]["outputs"]


async def test_version_pins_a_loaded_version(service, api_key):
    async with connected(key=api_key()) as ws:
        await ws.send_json_to({"id": 1, "model": "iris", "version": 1, "inputs": [IRIS_ROW]})
        reply = await ws.receive_json_from()
        assert reply["version"] == 1
        await ws.send_json_to({"id": 2, "model": "iris", "version": 9, "inputs": [IRIS_ROW]})
        await expect_error(ws, "unknown_model", rid=2)


async def test_ping_and_models(service, api_key):
    async with connected(key=api_key(models=["iris", "digits"])) as ws:
        await ws.send_json_to({"type": "ping", "id": "p1"})
        assert await ws.receive_json_from() == {"type": "pong", "id": "p1"}
        await ws.send_json_to({"type": "models"})
        reply = await ws.receive_json_from()
        assert reply["type"] == "models" and set(reply["models"]) == {"iris", "digits"}


async def test_type_defaults_to_predict_and_integer_ids_are_echoed(service, api_key):
    async with connected("/ws/v1/predict/iris/", key=api_key()) as ws:
        await ws.send_json_to({"id": 12345678901, "inputs": [IRIS_ROW]})
        reply = await ws.receive_json_from()
    assert reply["type"] == "prediction" and reply["id"] == 12345678901


async def test_replies_out_of_order_are_correlated_by_id(service, api_key, controlled):
    async with connected(key=api_key()) as ws:
        controlled.release.clear()  # the slow model holds its request
        await ws.send_json_to({"id": "slow", "model": "test-controlled", "inputs": [[1, 2]]})
        await asyncio.sleep(0.05)
        await ws.send_json_to({"id": "fast", "model": "iris", "inputs": [IRIS_ROW]})
        first = await ws.receive_json_from(timeout=5)
        controlled.release.set()
        second = await ws.receive_json_from(timeout=5)
    assert first["id"] == "fast" and first["outputs"][0]["label"] == "setosa"
    assert second["id"] == "slow" and second["outputs"] == [{"value": 3.0}]


async def test_fifty_concurrent_connections_are_batched_together(service, api_key, controlled):
    raw = api_key()
    communicators = []
    for _ in range(50):
        ws = WebsocketCommunicator(application, "/ws/v1/predict/iris/",
                                   headers=[(b"authorization", f"Bearer {raw}".encode())])
        assert (await ws.connect())[0]
        assert (await ws.receive_json_from())["type"] == "ready"
        communicators.append(ws)
    try:
        for round_ in range(3):
            await asyncio.gather(*(
                ws.send_json_to({"id": f"{i}-{round_}", "inputs": [[5.0 + i / 100, 3.0, 1.5, 0.2]]})
                for i, ws in enumerate(communicators)
            ))
        replies = [await ws.receive_json_from(timeout=10) for ws in communicators for _ in range(3)]
    finally:
        for ws in communicators:
            await ws.disconnect()
    assert all(r["type"] == "prediction" for r in replies)
    assert max(r["batch_size"] for r in replies) > 1
    ids = {r["id"] for r in replies}
    assert ids == {f"{i}-{round_}" for i in range(50) for round_ in range(3)}


# -- requests of a closed connection, requests in flight -------------------------------


async def test_a_closed_connection_s_queued_requests_are_never_run(service, api_key, controlled, monkeypatch):
    batcher = service.entry("test-controlled").batcher
    seen = record_rows(monkeypatch, batcher)
    raw = api_key()
    controlled.release.clear()
    async with connected(key=raw) as leaving:
        await leaving.send_json_to({"id": "running", "model": "test-controlled", "inputs": [[1, 1]]})
        await settle(lambda: seen == [[1, 1]])
        await leaving.send_json_to({"id": "queued", "model": "test-controlled", "inputs": [[2, 2]]})
        await leaving.send_json_to({"id": "queued-too", "model": "test-controlled", "inputs": [[3, 3], [3, 3]]})
        await settle(lambda: batcher.queue_depth == 2)
        assert batcher.queue_depth == 2
    controlled.release.set()
    async with connected(key=raw) as staying:
        await staying.send_json_to({"id": "after", "model": "test-controlled", "inputs": [[4, 4]]})
        reply = await staying.receive_json_from(timeout=5)
    assert reply["id"] == "after" and reply["outputs"] == [{"value": 8.0}]
    # The request already inside the model finished; the queued ones never reached it.
    assert seen == [[1, 1], [4, 4]]


def requests_in_flight():
    """The in-flight count as a scrape of /metrics and the dashboard's statistics would show it."""
    from prometheus_client import REGISTRY

    from monitoring import livestats, metrics

    metrics.refresh()
    return REGISTRY.get_sample_value("platform_requests_in_flight"), livestats.aggregator.in_flight


async def test_requests_in_flight_go_back_down_once_answered_failed_or_abandoned(service, api_key, controlled):
    gauge, dashboard = before = requests_in_flight()
    batcher = service.entry("test-controlled").batcher
    raw = api_key()
    async with connected(key=raw) as ws:
        controlled.release.clear()
        for i in range(3):
            await ws.send_json_to({"id": i, "model": "test-controlled", "inputs": [[i, 1]]})
        await settle(lambda: batcher.queue_depth == 2)
        assert requests_in_flight() == (gauge + 3, dashboard + 3)
        controlled.release.set()
        assert set(await receive_all(ws, 3)) == {0, 1, 2}
        assert requests_in_flight() == before

        controlled.fail = True
        await ws.send_json_to({"id": "fails", "model": "test-controlled", "inputs": [[1, 1]]})
        await expect_error(ws, "internal", rid="fails")
        controlled.fail = False
        assert requests_in_flight() == before

        controlled.release.clear()
        for i in range(2):
            await ws.send_json_to({"id": f"left-{i}", "model": "test-controlled", "inputs": [[i, 1]]})
        await settle(lambda: batcher.queue_depth == 1)
        assert requests_in_flight() == (gauge + 2, dashboard + 2)
    # The client went away with two requests pending: they no longer count.
    assert requests_in_flight() == before
    controlled.release.set()
    await settle(lambda: batcher.in_flight_rows == 0)
    assert requests_in_flight() == before


# -- the platform server's synchronous send ---------------------------------------------


async def test_predictions_go_out_through_the_send_frame_extension_when_the_server_offers_it(service, api_key):
    from streaming.transport import SEND_FRAME

    frames: list[tuple[bytes, bool]] = []

    def send_frame(payload: bytes, binary: bool) -> bool:
        frames.append((payload, binary))
        return True

    async with connected("/ws/v1/predict/iris/", key=api_key(), extensions={SEND_FRAME: {"send": send_frame}}) as ws:
        await ws.send_json_to({"id": "json", "inputs": [IRIS_ROW]})
        await ws.send_to(bytes_data=msgpack.packb({"id": "msgpack", "inputs": [IRIS_ROW, IRIS_ROW]}))
        await ws.send_json_to({"id": "bad", "inputs": [[1.0]]})
        # Errors found before a model call still take the ASGI send.
        assert (await ws.receive_json_from(timeout=5))["error"]["code"] == "invalid_input"
        await settle(lambda: len(frames) == 2)
        assert await ws.receive_nothing(timeout=0.1)

    by_id = {}
    for payload, binary in frames:
        reply = msgpack.unpackb(payload) if binary else json.loads(payload)
        by_id[reply["id"]] = (reply, binary)
    assert set(by_id) == {"json", "msgpack"}
    assert by_id["json"][1] is False and by_id["msgpack"][1] is True
    assert by_id["json"][0]["type"] == by_id["msgpack"][0]["type"] == "prediction"
    assert len(by_id["msgpack"][0]["outputs"]) == 2
    assert by_id["json"][0]["outputs"][0] == by_id["msgpack"][0]["outputs"][0]


async def test_a_served_prediction_reaches_the_log_as_its_frame_and_the_reply_sent(service, api_key):
    from monitoring import events
    from monitoring.predictionlog.rows import event_row, materialize, raw_row
    from streaming.transport import SEND_FRAME

    frames: list[bytes] = []
    seen = []
    events.on_prediction(seen.append)
    sent_json = json.dumps({"id": "json", "inputs": [IRIS_ROW]})
    sent_msgpack = msgpack.packb({"id": "msgpack", "inputs": [IRIS_ROW, IRIS_ROW]})
    extensions = {SEND_FRAME: {"send": lambda payload, binary: frames.append(payload) or True}}
    try:
        async with connected("/ws/v1/predict/iris/", key=api_key(), extensions=extensions) as ws:
            await ws.send_to(text_data=sent_json)
            await ws.send_to(bytes_data=sent_msgpack)
            await ws.send_json_to({"id": "bad", "inputs": [[1.0]]})
            assert (await ws.receive_json_from(timeout=5))["error"]["code"] == "invalid_input"
            await settle(lambda: len(seen) == 3)
    finally:
        events._prediction_sinks.remove(seen.append)
    by_id = {event.request_id: event for event in seen}
    assert by_id["json"].frame == sent_json and by_id["msgpack"].frame == sent_msgpack
    assert {by_id["json"].reply, by_id["msgpack"].reply} == set(frames)
    assert by_id["bad"].frame is None and by_id["bad"].reply is None
    for rid in ("json", "msgpack"):
        event = by_id[rid]
        # What the writer makes of the frame and the reply is the row of the parsed request.
        plain = events.PredictionEvent(**{**{name: getattr(event, name) for name in event.__slots__},
                                          "frame": None, "reply": None})
        assert materialize(raw_row("x", event)) == event_row("x", plain)
