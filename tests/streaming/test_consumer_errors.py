"""The prediction stream's errors: every code of PROTOCOL.md, each leaving the connection open."""

from __future__ import annotations

import asyncio

import msgpack
import pytest

from .helpers import (
    IRIS_ROW,
    assert_still_serving,
    connected,
    expect_error,
    receive_all,
    sample_rows,
    settle,
    slow_down,
)

# -- errors: every code, the connection stays open ------------------------------------


@pytest.mark.parametrize(
    ("frame", "code", "rid"),
    [
        ("{not json", "invalid_json", None),
        ("[1, 2, 3]", "invalid_json", None),
        ('"just a string"', "invalid_json", None),
        ('{"id": 1, "inputs": [[1,2,3,4]], "model": "iris", "x": NaN}', "invalid_json", None),
        ('{"id": 1, "model": "iris"}', "invalid_request", 1),
        ('{"id": 2, "model": "iris", "inputs": "5.1,3.5"}', "invalid_request", 2),
        ('{"id": 3, "model": 7, "inputs": [[1,2,3,4]]}', "invalid_request", 3),
        ('{"id": 4, "model": "iris", "version": "1", "inputs": [[1,2,3,4]]}', "invalid_request", 4),
        ('{"id": 5, "type": "explode"}', "invalid_request", 5),
        ('{"id": [1], "model": "iris", "inputs": [[1,2,3,4]]}', "invalid_request", None),
        ('{"id": "' + "x" * 129 + '", "model": "iris", "inputs": [[1,2,3,4]]}', "invalid_request", None),
        ('{"id": 6, "inputs": [[1,2,3,4]]}', "invalid_request", 6),
        ('{"id": 7, "model": "iris", "inputs": [[1,2,3]]}', "invalid_input", 7),
        ('{"id": 8, "model": "iris", "inputs": [[1,2,3,"4"]]}', "invalid_input", 8),
        ('{"id": 9, "model": "iris", "inputs": [[1,2,3,true]]}', "invalid_input", 9),
        ('{"id": 10, "model": "iris", "inputs": [[1,2,3,null]]}', "invalid_input", 10),
        ('{"id": 11, "model": "iris", "inputs": [[1,2,3,1e999]]}', "invalid_input", 11),
        ('{"id": 12, "model": "iris", "inputs": []}', "invalid_input", 12),
        ('{"id": 13, "model": "iris", "inputs": [{"sepal_length": 1}]}', "invalid_input", 13),
        ('{"id": 14, "model": "iris", "inputs": [{"sepal_length": 1, "sepal_width": 1, '
         '"petal_length": 1, "petal_width": 1, "stem": 2}]}', "invalid_input", 14),
        ('{"id": 15, "model": "nope", "inputs": [[1,2,3,4]]}', "unknown_model", 15),
    ],
)
async def test_bad_frames_get_their_error_and_the_connection_stays_open(service, api_key, frame, code, rid):
    async with connected(key=api_key()) as ws:
        await ws.send_to(text_data=frame)
        reply = await expect_error(ws, code)
        assert reply["id"] == rid
        assert reply["error"]["message"]
        await assert_still_serving(ws)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("[" * 100_000 + "]" * 100_000, "invalid_json"),
        ('{"id": 1, "model": "iris", "inputs": ' + "[" * 100_000 + "]" * 100_000 + "}", "invalid_json"),
        # Deep, but within the parsers' limits: the rows are refused, not the frame.
        ('{"id": 1, "model": "iris", "inputs": ' + "[" * 900 + "]" * 900 + "}", "invalid_input"),
        ('{"id": 1, "model": "iris", "inputs": [[1, 2, 3, ' + "[" * 900 + "]" * 900 + "]]}", "invalid_input"),
    ],
    ids=["top-level", "in-inputs", "deep-rows", "deep-value"],
)
async def test_deeply_nested_json_gets_its_error_and_the_connection_stays_open(service, api_key, frame, code):
    async with connected(key=api_key()) as ws:
        await ws.send_to(text_data=frame)
        await expect_error(ws, code)
        await assert_still_serving(ws)


async def test_deeply_nested_messagepack_gets_invalid_json_and_the_connection_stays_open(service, api_key):
    async with connected(key=api_key()) as ws:
        await ws.send_to(bytes_data=b"\x91" * 100_000 + b"\x90")
        reply = msgpack.unpackb(await ws.receive_from(timeout=10))
        assert reply["error"]["code"] == "invalid_json", reply
        assert reply["error"]["message"] == "The frame is not valid MessagePack: it is nested too deeply."
        await assert_still_serving(ws)


async def test_invalid_input_message_names_row_and_feature_counts(service, api_key):
    async with connected("/ws/v1/predict/iris/", key=api_key()) as ws:
        await ws.send_json_to({"id": "c-18", "inputs": [IRIS_ROW, [1, 2, 3]]})
        reply = await expect_error(ws, "invalid_input", rid="c-18")
    assert reply["error"]["message"] == "row 1: expected 4 features, got 3."


async def test_too_many_rows_is_invalid_input(service, api_key, settings):
    settings.PLATFORM_MAX_ROWS = 3
    async with connected("/ws/v1/predict/iris/", key=api_key()) as ws:
        await ws.send_json_to({"id": 1, "inputs": [IRIS_ROW] * 4})
        reply = await expect_error(ws, "invalid_input", rid=1)
        assert "at most 3" in reply["error"]["message"]
        await assert_still_serving(ws)


async def test_model_that_failed_to_load_is_model_unavailable(service, api_key, controlled):
    async with connected(key=api_key()) as ws:
        await ws.send_json_to({"id": 1, "model": "test-controlled", "version": 2, "inputs": [[1, 2]]})
        await expect_error(ws, "model_unavailable", rid=1)
        await assert_still_serving(ws)


async def test_model_error_is_internal_and_says_nothing_secret(service, api_key, controlled):
    controlled.fail = True
    async with connected(key=api_key()) as ws:
        await ws.send_json_to({"id": 1, "model": "test-controlled", "inputs": [[1, 2]]})
        reply = await expect_error(ws, "internal", rid=1)
        assert "secret" not in reply["error"]["message"]
        controlled.fail = False
        await ws.send_json_to({"id": 2, "model": "test-controlled", "inputs": [[1, 2]]})
        assert (await ws.receive_json_from())["outputs"] == [{"value": 3.0}]


async def test_full_model_queue_is_overloaded_with_retry_after(service, api_key, controlled):
    controlled.release.clear()
    async with connected(key=api_key()) as ws:
        # One request is in the model, four fill the queue (capacity 4), the sixth is refused.
        for i in range(6):
            await ws.send_json_to({"id": i, "model": "test-controlled", "inputs": [[i, 1]]})
            if i == 0:
                await asyncio.sleep(0.05)
        reply = await expect_error(ws, "overloaded", rid=5)
        assert reply["error"]["retry_after_ms"] >= 1
        await assert_still_serving(ws)
        controlled.release.set()
        replies = await receive_all(ws, 5)
    assert {rid: r["outputs"][0]["value"] for rid, r in replies.items()} == {i: i + 1.0 for i in range(5)}


async def test_connection_past_max_in_flight_is_overloaded(service, api_key, controlled, settings):
    settings.PLATFORM_MAX_IN_FLIGHT = 2
    controlled.release.clear()
    async with connected(key=api_key()) as ws:
        for i in range(3):
            await ws.send_json_to({"id": i, "model": "test-controlled", "inputs": [[i, 0]]})
        reply = await expect_error(ws, "overloaded", rid=2)
        assert reply["error"]["retry_after_ms"] >= 1
        assert "2 requests pending" in reply["error"]["message"]
        controlled.release.set()
        replies = await receive_all(ws, 2)
        assert set(replies) == {0, 1}
        await assert_still_serving(ws)


async def teach_batch_time(ws, batcher, monkeypatch, delay_s):
    """Make the controlled model take ``delay_s`` a call and let its batcher see ten such calls."""
    slow_down(monkeypatch, batcher, delay_s)
    for i in range(10):
        await ws.send_json_to({"id": f"warm-{i}", "model": "test-controlled", "inputs": [[i, 0]]})
        assert (await ws.receive_json_from(timeout=5))["type"] == "prediction"


async def overloaded_when_queue_full(ws, batcher, controlled):
    """Hold the model, fill its queue (capacity 4), and return one more request's overloaded reply."""
    controlled.release.clear()
    for i in range(5):
        await ws.send_json_to({"id": i, "model": "test-controlled", "inputs": [[i, 1]]})
        if i == 0:
            await settle(lambda: batcher.in_flight_rows == 1)
    await ws.send_json_to({"id": "refused", "model": "test-controlled", "inputs": [[9, 9]]})
    reply = await expect_error(ws, "overloaded", rid="refused")
    advice = batcher.retry_after_ms()
    controlled.release.set()
    await receive_all(ws, 5)
    return reply["error"]["retry_after_ms"], advice


async def test_overloaded_retry_after_follows_the_model_s_queue_and_pace(service, api_key, controlled, monkeypatch):
    batcher = service.entry("test-controlled").batcher
    async with connected(key=api_key()) as ws:
        await teach_batch_time(ws, batcher, monkeypatch, 0)
        fast, fast_advice = await overloaded_when_queue_full(ws, batcher, controlled)
        await teach_batch_time(ws, batcher, monkeypatch, 0.04)
        slow, slow_advice = await overloaded_when_queue_full(ws, batcher, controlled)
    assert (fast, slow) == (fast_advice, slow_advice)
    # The four queued requests are one batch (max_batch_size 8): the advice is about one model call.
    assert fast < 20
    assert 30 <= slow <= 200


@pytest.mark.parametrize("path", ["/ws/v1/predict/", "/ws/v1/predict/test-controlled/"])
async def test_past_max_in_flight_retry_after_is_the_model_queue_s(service, api_key, controlled, monkeypatch,
                                                                  settings, path):
    settings.PLATFORM_MAX_IN_FLIGHT = 2
    batcher = service.entry("test-controlled").batcher
    async with connected(path, key=api_key()) as ws:
        await teach_batch_time(ws, batcher, monkeypatch, 0.04)
        controlled.release.clear()
        for i in range(3):
            frame = {"id": i, "inputs": [[i, 0]]}
            if path == "/ws/v1/predict/":
                frame["model"] = "test-controlled"
            await ws.send_json_to(frame)
        reply = await expect_error(ws, "overloaded", rid=2)
        advice = batcher.retry_after_ms()
        controlled.release.set()
        assert set(await receive_all(ws, 2)) == {0, 1}
    assert reply["error"]["retry_after_ms"] == advice
    assert 30 <= advice <= 200


async def test_rate_limited_key_gets_retry_after(service, api_key):
    async with connected("/ws/v1/predict/iris/", key=api_key(rate=1)) as ws:
        await ws.send_json_to({"id": 1, "inputs": [IRIS_ROW]})
        assert (await ws.receive_json_from())["type"] == "prediction"
        await ws.send_json_to({"id": 2, "inputs": [IRIS_ROW]})
        reply = await expect_error(ws, "rate_limited", rid=2)
        assert 1 <= reply["error"]["retry_after_ms"] <= 1000
        await asyncio.sleep(reply["error"]["retry_after_ms"] / 1000 + 0.05)
        await ws.send_json_to({"id": 3, "inputs": [IRIS_ROW]})
        assert (await ws.receive_json_from())["id"] == 3


async def test_flood_far_beyond_rate_limit_closes_1008(service, api_key):
    async with connected("/ws/v1/predict/iris/", key=api_key(rate=1)) as ws:
        for i in range(150):
            await ws.send_json_to({"id": i, "inputs": [IRIS_ROW]})
        closed = None
        for _ in range(200):
            message = await ws.receive_output(timeout=5)
            if message["type"] == "websocket.close":
                closed = message
                break
        assert closed == {"type": "websocket.close", "code": 1008}


async def test_request_past_its_deadline_times_out_and_is_not_run(service, api_key, controlled, settings):
    settings.PLATFORM_REQUEST_TIMEOUT_MS = 100
    controlled.release.clear()
    async with connected(key=api_key()) as ws:
        await ws.send_json_to({"id": "held", "model": "test-controlled", "inputs": [[1, 1]]})
        await asyncio.sleep(0.05)
        await ws.send_json_to({"id": "late", "model": "test-controlled", "inputs": [[5, 5], [6, 6]]})
        await asyncio.sleep(0.3)
        controlled.release.set()
        replies = await receive_all(ws, 2)
    assert replies["held"]["type"] == "prediction"
    assert replies["late"]["error"]["code"] == "timeout"
    assert 2 not in controlled.calls  # the two-row request never reached the model


async def test_frame_over_the_size_limit_closes_1009(service, api_key, settings):
    settings.PLATFORM_MAX_FRAME_BYTES = 2048
    async with connected("/ws/v1/predict/iris/", key=api_key()) as ws:
        await ws.send_json_to({"id": 1, "inputs": [IRIS_ROW] * 200})
        assert await ws.receive_output(timeout=5) == {"type": "websocket.close", "code": 1009}


async def test_bad_request_in_a_busy_stream_leaves_neighbours_untouched(service, api_key):
    async with connected("/ws/v1/predict/iris/", key=api_key()) as ws:
        for i in range(40):
            if i == 17:
                await ws.send_json_to({"id": i, "inputs": [[1, 2, "x", 4]]})
            else:
                await ws.send_json_to({"id": i, "inputs": [[4.0 + i / 10, 3.0, 1.4, 0.2]]})
        replies = await receive_all(ws, 40)
    assert replies[17]["type"] == "error" and replies[17]["error"]["code"] == "invalid_input"
    good = [r for i, r in replies.items() if i != 17]
    assert all(r["type"] == "prediction" and len(r["outputs"]) == 1 for r in good)


async def test_messagepack_frames_give_the_same_answers_as_json(service, api_key):
    rows = sample_rows(service, "digits", 3)
    async with connected("/ws/v1/predict/digits/", key=api_key()) as ws:
        await ws.send_json_to({"id": "json", "inputs": rows})
        as_json = await ws.receive_json_from()
        await ws.send_to(bytes_data=msgpack.packb({"id": "mp", "inputs": rows}))
        raw = await ws.receive_from()
        assert isinstance(raw, bytes)
        as_msgpack = msgpack.unpackb(raw)
        await ws.send_to(bytes_data=b"\xc1 not msgpack")
        bad = msgpack.unpackb(await ws.receive_from())
        await ws.send_to(bytes_data=msgpack.packb([1, 2]))
        not_a_map = msgpack.unpackb(await ws.receive_from())
    assert as_msgpack["type"] == "prediction" and as_msgpack["id"] == "mp"
    assert as_msgpack["outputs"] == as_json["outputs"]
    assert bad["error"]["code"] == "invalid_json" and bad["id"] is None
    assert not_a_map["error"]["code"] == "invalid_json"


async def test_refused_requests_are_reported_with_the_model_version_they_resolved_to(service, api_key):
    from monitoring import events

    seen = []
    events.on_prediction(seen.append)
    try:
        async with connected("/ws/v1/predict/iris/", key=api_key("reporter")) as ws:
            await ws.send_json_to({"id": "bad", "inputs": [[1, 2]]})
            await expect_error(ws, "invalid_input", rid="bad")
            await ws.send_to(text_data="{broken")
            await expect_error(ws, "invalid_json", rid=None)
            await ws.send_json_to({"id": "good", "inputs": [IRIS_ROW]})
            assert (await ws.receive_json_from())["type"] == "prediction"
    finally:
        events._prediction_sinks.remove(seen.append)
    by_id = {event.request_id: event for event in seen}
    bad = by_id["bad"]
    assert (bad.model, bad.version, bad.outcome, bad.api_key, bad.rows) == ("iris", 1, "invalid_input", "reporter", 1)
    assert by_id[None].outcome == "invalid_json" and by_id[None].version is None
    good = by_id["good"]
    assert (good.outcome, good.version) == ("ok", 1) and good.batch_size >= 1
    assert good.outputs[0]["label"] == "setosa" and good.total_ms >= good.inference_ms > 0


async def test_a_frame_after_the_drain_began_is_answered_overloaded_and_accepted_ones_before_1001(
        service, api_key, controlled):
    from streaming.draining import drain_connections

    controlled.release.clear()
    async with connected(key=api_key()) as ws:
        await ws.send_json_to({"id": "before", "model": "test-controlled", "inputs": [[1, 2]]})
        await asyncio.sleep(0.05)  # read and queued: accepted before the drain
        draining = asyncio.ensure_future(drain_connections())
        await asyncio.sleep(0.05)
        await ws.send_json_to({"id": "after", "model": "test-controlled", "inputs": [[3, 4]]})
        refused = await expect_error(ws, "overloaded", rid="after")
        assert refused["error"]["retry_after_ms"] >= 1
        assert "shutting down" in refused["error"]["message"]
        controlled.release.set()
        served = await ws.receive_json_from(timeout=5)
        assert served["type"] == "prediction" and served["id"] == "before", served
        assert await ws.receive_output(timeout=5) == {"type": "websocket.close", "code": 1001}
        await asyncio.wait_for(draining, 10)
