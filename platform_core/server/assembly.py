"""daphne's protocol, server and command line, put together from the patches of this package.

:class:`PlatformServer` checks every patch's internals when it is
constructed, so the server refuses to start on a daphne, autobahn or Twisted
release the patches were not made for. It swaps its own WebSocket protocol
into daphne's factory through ``ready_callable``, which daphne's
``Server.run()`` calls once its factories exist and before the reactor runs;
daphne has no other way to choose the WebSocket protocol class.
"""

from __future__ import annotations

import sys

from daphne.cli import CommandLineInterface
from daphne.server import Server

from platform_core.server import closing, coalescing, grpc_port, lean_http, send_frame, unmasking, workers
from platform_core.server.closing import (
    CloseCodesProtocol,
    GracefulDrainServer,
    answer_oversized_frames,
    configured_frame_limit,
)
from platform_core.server.coalescing import CoalescedWritesProtocol, CoalescedWritesServer
from platform_core.server.internals import Attribute, Mentioned, Parameter, require
from platform_core.server.send_frame import SendFrameServer
from platform_core.server.unmasking import use_fast_unmasking

INTERNALS = (
    Parameter("daphne", Server, "__init__", "ready_callable"),
    Mentioned("daphne", Server, "run", "ready_callable"),
    Mentioned("daphne", Server, "run", "ws_factory"),
    Attribute("daphne", CommandLineInterface, "server_class"),
    Mentioned("daphne", CommandLineInterface, "run", "server_class"),
    Mentioned("daphne", CommandLineInterface, "__init__", "parser"),
)


def check_internals() -> None:
    """Raise IncompatibleDependency if an installed dependency lacks what any of the patches relies on."""
    require(__name__, INTERNALS)
    for patch in (closing, send_frame, unmasking, coalescing, lean_http):
        patch.check_internals()


class PlatformWebSocketProtocol(CoalescedWritesProtocol, CloseCodesProtocol):
    """daphne's WebSocket protocol with the protocol close codes, ``send_frame`` and coalesced writes."""


class PlatformServer(CoalescedWritesServer, SendFrameServer, GracefulDrainServer):
    """daphne's server with ``platform.send_frame``, coalesced writes, graceful drain and fast unmasking."""

    def __init__(self, *args, **kwargs):
        check_internals()
        super().__init__(*args, **kwargs)
        self._outer_ready_callable = self.ready_callable
        self.ready_callable = self._configure_factories

    def _configure_factories(self):
        """Called by ``Server.run()`` once the factories exist, before the reactor runs."""
        use_fast_unmasking()
        self.ws_factory.protocol = PlatformWebSocketProtocol
        answer_oversized_frames(self.ws_factory, configured_frame_limit())
        if lean_http.enabled():
            lean_http.serve_plain_http_leanly(self.http_factory, self.application)
        if self._outer_ready_callable is not None:
            self._outer_ready_callable()


class PlatformCommandLineInterface(CommandLineInterface):
    server_class = PlatformServer

    def __init__(self):
        super().__init__()
        self.parser.prog = "python -m platform_core.server"  # rather than __main__.py in the usage line
        grpc_port.add_argument(self.parser)
        workers.add_argument(self.parser)

    def run(self, args):
        grpc_port.serve(args, self.parser)
        super().run(args)


def main() -> None:
    # ``--workers N`` (N > 1) supervises N daphne processes on one socket and exits here.
    PlatformCommandLineInterface().run(workers.supervise_or_pass(sys.argv[1:]))
