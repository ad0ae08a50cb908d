"""One lean HTTP request's side of the exchange: the ``platform.disconnect`` watch, in process."""

from __future__ import annotations

from platform_core.server.lean_exchange import Request
from platform_core.server.lean_http import LeanHTTPProtocol
from streaming.transport import DISCONNECT, disconnect_watch


def test_a_watcher_hears_the_disconnect_once_and_an_unwatched_one_does_not():
    request = Request(keep_alive=True)
    heard: list[str] = []
    request.watch(lambda: heard.append("a"))
    unwatch = request.watch(lambda: heard.append("b"))
    unwatch()
    request.lost()
    request.lost()
    assert heard == ["a"]
    assert request.disconnected


def test_watching_a_request_whose_client_already_left_calls_back_at_once():
    request = Request(keep_alive=True)
    request.lost()
    heard: list[str] = []
    request.watch(lambda: heard.append("late"))()  # the returned unwatch is harmless too
    assert heard == ["late"]


def test_a_failing_watcher_does_not_keep_the_others_from_hearing():
    request = Request(keep_alive=True)
    heard: list[str] = []
    request.watch(lambda: 1 / 0)
    request.watch(lambda: heard.append("second"))
    request.lost()
    assert heard == ["second"]


def test_the_request_being_served_hears_its_client_leave_after_its_body_was_read():
    """Its body complete, the request is no longer the one being read; it must still hear the disconnect."""
    protocol = LeanHTTPProtocol(application=None, fallback=lambda: None, server=None)
    served, queued = Request(keep_alive=True), Request(keep_alive=True)
    protocol._start = lambda scope, request: setattr(protocol, "serving", request)  # no application to run
    protocol._start({}, served)
    protocol.pending.append(({}, queued))
    heard: list[Request] = []
    served.watch(lambda: heard.append(served))
    queued.watch(lambda: heard.append(queued))
    protocol.connectionLost()
    assert heard == [served, queued]


def test_the_scope_offers_the_watch_to_the_application():
    protocol = LeanHTTPProtocol(application=None, fallback=lambda: None, server=None)
    protocol.url = b"/v2/models/iris/infer"
    protocol.parser.feed_data(b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\n")
    request = Request(keep_alive=True)
    scope = protocol._scope(request)
    assert scope["extensions"][DISCONNECT]["watch"] == request.watch
    assert disconnect_watch(scope) == request.watch
    assert disconnect_watch({"type": "http"}) is None
