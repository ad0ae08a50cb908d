"""The platform's answer to a GET, from its ``/v2`` application in process (what a probe or health check gets)."""

from __future__ import annotations

from asgiref.testing import ApplicationCommunicator

from streaming.oip.app import OpenInferenceApp

#: What the stand-in for Django answers: a path the ``/v2`` application does not serve.
NOT_OURS = 404


async def get(path: str) -> tuple[int, bytes]:
    async def django(scope, receive, send):
        await send({"type": "http.response.start", "status": NOT_OURS, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    communicator = ApplicationCommunicator(OpenInferenceApp(django), {
        "type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""})
    await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
    start = await communicator.receive_output(timeout=10)
    body = await communicator.receive_output(timeout=10)
    return start["status"], body["body"]
