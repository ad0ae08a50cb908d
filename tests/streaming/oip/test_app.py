"""The ``/v2`` application in process, on the demo pool and a model the test holds: the rarer statuses."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator
from django.utils import timezone

from monitoring import events
from streaming.models import APIKey
from streaming.oip.app import OpenInferenceApp, read_body
from streaming.oip.errors import HttpError
from streaming.oip.keys import key_cache

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]


async def django_stand_in(scope, receive, send):
    await send({"type": "http.response.start", "status": 299, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


@pytest.fixture
def app():
    key_cache.clear()
    yield OpenInferenceApp(django_stand_in)
    key_cache.clear()


@pytest.fixture
def reported(monkeypatch):
    """The PredictionEvents the application emits."""
    seen: list[events.PredictionEvent] = []
    monkeypatch.setattr(events, "_prediction_sinks", [seen.append])
    return seen


def start(app, method: str, path: str, body: Any = None, key: str | None = None) -> ApplicationCommunicator:
    headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
    communicator = ApplicationCommunicator(app, {"type": "http", "method": method, "path": path, "headers": headers,
                                                 "query_string": b""})
    data = b"" if body is None else json.dumps(body).encode()
    communicator.input_queue.put_nowait({"type": "http.request", "body": data, "more_body": False})
    communicator.future  # the request starts now, not when its answer is awaited  # noqa: B018
    return communicator


async def answer(communicator: ApplicationCommunicator) -> tuple[int, dict[bytes, bytes], dict[str, Any]]:
    response = await communicator.receive_output(timeout=10)
    body = await communicator.receive_output(timeout=10)
    return response["status"], dict(response["headers"]), json.loads(body["body"])


async def until(condition, timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition did not hold in time")


async def known_key(app, api_key, **fields) -> str:
    """A new key, already looked up once: requests with it go to the pool without a database round trip."""
    key = api_key(**fields)
    assert (await answer(start(app, "GET", "/v2/models/iris", key=key)))[0] == 200
    return key


def infer(rows: list[list[float]], rid: Any = "r") -> dict[str, Any]:
    return {"id": rid, "inputs": [{"name": "x", "shape": [len(rows), len(rows[0])], "datatype": "FP64",
                                   "data": rows}]}


async def test_other_paths_go_to_django(app):
    status, _, _ = await answer(start(app, "GET", "/v2x/models"))
    assert status == 299


async def test_a_full_model_queue_answers_503_with_retry_after(app, service, api_key, controlled, reported):
    key = await known_key(app, api_key)
    controlled.release.clear()
    batcher = service.entry("test-controlled").batcher
    held = [start(app, "POST", "/v2/models/test-controlled/infer", infer([[0, 1]], rid=0), key)]
    await until(lambda: batcher.in_flight_rows == 1)
    held += [start(app, "POST", "/v2/models/test-controlled/infer", infer([[i, 1]], rid=i), key) for i in range(1, 5)]
    await until(lambda: batcher.queue_depth == 4)
    status, headers, reply = await answer(start(app, "POST", "/v2/models/test-controlled/infer", infer([[9, 9]]), key))
    assert status == 503 and int(headers[b"retry-after"]) >= 1 and "error" in reply
    controlled.release.set()
    values = [(await answer(c))[2]["outputs"][0]["data"] for c in held]
    assert values == [[i + 1.0] for i in range(5)]
    infers = [e for e in reported if e.model == "test-controlled"]
    assert sorted(e.outcome for e in infers) == ["ok"] * 5 + ["overloaded"]
    assert all(e.protocol == "http" for e in infers)


async def test_a_request_past_its_deadline_answers_504(app, service, api_key, controlled, settings, reported):
    settings.PLATFORM_REQUEST_TIMEOUT_MS = 100
    key = await known_key(app, api_key)
    controlled.release.clear()
    batcher = service.entry("test-controlled").batcher
    held = start(app, "POST", "/v2/models/test-controlled/infer", infer([[1, 1]], rid="held"), key)
    await until(lambda: batcher.in_flight_rows == 1)
    late = start(app, "POST", "/v2/models/test-controlled/infer", infer([[5, 5], [6, 6]], rid="late"), key)
    await until(lambda: batcher.queue_depth == 1)
    await asyncio.sleep(0.3)
    controlled.release.set()
    assert (await answer(held))[0] == 200
    status, _, reply = await answer(late)
    assert status == 504 and "error" in reply
    assert {e.request_id: e.outcome for e in reported} == {"held": "ok", "late": "timeout"}
    assert 2 not in controlled.calls  # the two-row request never reached the model


async def test_a_key_past_its_rate_answers_429(app, service, api_key):
    key = await known_key(app, api_key, rate=1)
    first = await answer(start(app, "POST", "/v2/models/iris/infer", infer([IRIS_ROW]), key))
    status, headers, reply = await answer(start(app, "POST", "/v2/models/iris/infer", infer([IRIS_ROW]), key))
    assert first[0] == 200 and status == 429 and headers[b"retry-after"] == b"1", reply


async def test_a_revoked_key_is_refused_within_the_check_interval(app, service, api_key, settings):
    settings.PLATFORM_KEY_CHECK_INTERVAL_S = 0.2
    key = api_key(name="to-revoke")
    assert (await answer(start(app, "GET", "/v2/models/iris", key=key)))[0] == 200
    await asyncio.to_thread(lambda: APIKey.objects.filter(name="to-revoke").update(revoked_at=timezone.now()))
    await asyncio.sleep(0.3)
    status, _, reply = await answer(start(app, "GET", "/v2/models/iris", key=key))
    assert status == 401, reply


async def test_ready_answers_503_once_the_server_drains(app, service):
    assert (await answer(start(app, "GET", "/v2/health/ready")))[0] == 200
    await app.drain(timeout_s=1.0)
    status, _, reply = await answer(start(app, "GET", "/v2/health/ready"))
    assert status == 503 and reply == {"ready": False}
    assert (await answer(start(app, "GET", "/v2/health/live")))[0] == 200


async def test_the_body_is_read_in_pieces_and_reading_stops_at_the_limit():
    sent = 0

    async def receive():
        nonlocal sent
        sent += 1
        return {"type": "http.request", "body": b"x" * 1000, "more_body": True}

    with pytest.raises(HttpError) as caught:
        await read_body({"headers": []}, receive, limit_bytes=4500)
    assert caught.value.status == 413 and sent == 5


async def test_a_response_that_cannot_be_sent_is_reported_not_delivered(app, service, api_key, reported):
    key = await known_key(app, api_key)

    bodies = [{"type": "http.request", "body": json.dumps(infer([IRIS_ROW], rid="gone")).encode()}]

    async def receive():
        if bodies:
            return bodies.pop()
        await asyncio.Event().wait()  # no disconnect until the response fails

    async def send(message):
        raise OSError("the connection had closed")

    scope = {"type": "http", "method": "POST", "path": "/v2/models/iris/infer", "query_string": b"",
             "headers": [(b"authorization", f"Bearer {key}".encode())]}
    await app(scope, receive, send)
    assert [(e.request_id, e.outcome, e.protocol) for e in reported] == [("gone", "not_delivered", "http")]
    assert "closed before the response" in reported[0].error


async def test_a_client_that_disconnects_while_its_request_is_queued_has_it_dropped_unrun(
        app, service, api_key, controlled, reported):
    key = await known_key(app, api_key)
    controlled.release.clear()
    batcher = service.entry("test-controlled").batcher
    held = start(app, "POST", "/v2/models/test-controlled/infer", infer([[1, 1]], rid="held"), key)
    await until(lambda: batcher.in_flight_rows == 1)
    leaving = start(app, "POST", "/v2/models/test-controlled/infer", infer([[2, 2]] * 3, rid="leaving"), key)
    await until(lambda: batcher.queue_depth == 1)
    leaving.input_queue.put_nowait({"type": "http.disconnect"})
    await until(lambda: any(e.request_id == "leaving" for e in reported))
    controlled.release.set()
    assert (await answer(held))[0] == 200
    await leaving.wait(timeout=5)
    assert {e.request_id: e.outcome for e in reported if e.model == "test-controlled"} == {
        "held": "ok", "leaving": "not_delivered"}
    assert "it was not run" in next(e.error for e in reported if e.request_id == "leaving")
    assert 3 not in controlled.calls  # the three-row request never reached the model


async def test_while_draining_infer_is_refused_503_and_accepted_requests_are_answered(
        app, service, api_key, controlled, reported):
    key = await known_key(app, api_key)
    controlled.release.clear()
    batcher = service.entry("test-controlled").batcher
    held = start(app, "POST", "/v2/models/test-controlled/infer", infer([[1, 2]], rid="held"), key)
    await until(lambda: batcher.in_flight_rows == 1)
    draining = asyncio.ensure_future(app.drain(timeout_s=5.0))
    await until(lambda: app.draining)
    status, headers, reply = await answer(start(app, "POST", "/v2/models/iris/infer", infer([IRIS_ROW], rid="late"),
                                                key))
    assert status == 503 and int(headers[b"retry-after"]) >= 1 and "shutting down" in reply["error"]
    assert not draining.done()  # the accepted request is still waited for
    controlled.release.set()
    status, _, reply = await answer(held)
    assert status == 200 and reply["outputs"][0]["data"] == [3.0]
    await asyncio.wait_for(draining, 5)
    # The refusal comes before the body is read: its record has the model, not the id.
    assert [(e.model, e.outcome) for e in reported if e.model in ("test-controlled", "iris")] == [
        ("iris", "overloaded"), ("test-controlled", "ok")]


async def test_a_body_orjson_cannot_write_is_written_by_the_standard_encoder():
    """A lone surrogate (from a JSON id like "\\ud800") is refused by orjson; the response still goes out."""
    from streaming.oip.app import respond

    sent: list[dict[str, Any]] = []

    async def send(message):
        sent.append(message)

    await respond(send, 200, {"id": "\ud800", "outputs": [1.5]})
    body = sent[1]["body"]
    assert json.loads(body) == {"id": "\ud800", "outputs": [1.5]}
    assert (b"content-length", str(len(body)).encode()) in sent[0]["headers"]
