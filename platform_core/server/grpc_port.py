"""``--grpc-port``: the Open Inference Protocol's gRPC service, started with the server, in its process and loop.

Off unless the option is given. The service binds the host that daphne's
``-b`` binds (127.0.0.1 by default) and starts once the reactor runs, on
the asyncio loop that daphne's Twisted reactor runs, after the application
(and so every model) has loaded. It shares the process's infer requests
(``streaming.oip.infer.inferences``) with the HTTP application, and is
stopped at shutdown after they drain (``platform_core.lifecycle``). A port
that cannot be bound stops the server: a platform asked to serve gRPC must
not run without it. Under ``--workers``, each worker serves the port
(SO_REUSEPORT) and the kernel spreads the connections among them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
#: Right after the HTTP application's drain (order 9), before the WebSocket connections close (order 10).
SHUTDOWN_ORDER = 9


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--grpc-port", type=int, default=None, dest="grpc_port",
        help="Serve the Open Inference Protocol over gRPC on this port too (off when not given)",
    )


def serve(arguments: list[str] | None, parser: argparse.ArgumentParser) -> None:
    """Arrange for the gRPC service to start with the reactor when the command line asks for it."""
    options, _ = parser.parse_known_args(arguments)
    if options.grpc_port is None:
        return
    if not 0 < options.grpc_port <= 65535:
        parser.error(f"--grpc-port must be between 1 and 65535, got {options.grpc_port}.")
    host = options.host or DEFAULT_HOST
    from twisted.internet import reactor

    reactor.callWhenRunning(_start, host, options.grpc_port)  # type: ignore[attr-defined]


def _start(host: str, port: int) -> None:
    """Called once the reactor runs, on its asyncio loop."""
    from platform_core.lifecycle import on_shutdown
    from streaming.oip.infer import inferences
    from streaming.oip.rpc.server import GrpcService

    # Under --workers, every worker serves the port (platform_core.server.workers sets the index).
    service = GrpcService(host, port, inferences, share_port="PLATFORM_WORKER_INDEX" in os.environ)
    started = asyncio.ensure_future(service.start())
    started.add_done_callback(_started)
    on_shutdown(service.stop, order=SHUTDOWN_ORDER)


def _started(started: asyncio.Future[None]) -> None:
    if started.cancelled():
        return
    exc = started.exception()
    if exc is not None:
        from twisted.internet import reactor

        logger.critical("The gRPC service could not start: %s", exc)
        reactor.stop()  # type: ignore[attr-defined,misc]
