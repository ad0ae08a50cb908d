"""The order of the shutdown hooks ``platform_core`` registers: new connections are refused before anything waits."""

from __future__ import annotations

from platform_core import asgi, lifecycle
from streaming.draining import Drain, drain_connections, refuse_new_connections


def registered_hooks() -> list[lifecycle.ShutdownHook]:
    return [hook for _, hook in lifecycle._hooks]


def test_new_websocket_connections_are_refused_before_any_other_hook_runs():
    hooks = registered_hooks()
    # Before the HTTP requests in flight are waited for (the readiness check fails from then on),
    # and long before the open connections drain: none opens in between to be cut at exit.
    assert hooks[0] is refuse_new_connections
    assert hooks.index(refuse_new_connections) < hooks.index(asgi.open_inference_app.drain) < hooks.index(
        drain_connections)


async def test_the_first_hook_makes_every_later_connection_go_away(monkeypatch):
    monkeypatch.setattr(Drain, "started", False)
    await refuse_new_connections()
    assert Drain.started
