"""The gRPC service on its own port, run by grpc.aio on the event loop of the process that serves HTTP.

It runs on the loop it is started on: under daphne, the asyncio loop that
Twisted's reactor runs, so a gRPC request reaches the very batchers, key
cache and rate limits that the WebSocket stream and HTTP use, and a batch
may hold requests of all three. Messages are limited to
``PLATFORM_MAX_FRAME_BYTES``, the limit of an HTTP body and a WebSocket
frame; grpc refuses a larger one with RESOURCE_EXHAUSTED.

At shutdown, :meth:`GrpcService.stop` first drains the process's infer
requests (new ones are refused UNAVAILABLE, those accepted are answered),
then stops the server, which closes its connections after ``grace_s``.
"""

from __future__ import annotations

import logging

import grpc
from django.conf import settings

from ..infer import Inferences
from .service import InferenceServicer, method_handlers

logger = logging.getLogger(__name__)

#: How long open streams may go on once the requests in flight are answered.
STOP_GRACE_S = 1.0


class GrpcService:
    """``inference.GRPCInferenceService`` on ``host:port``; ``port`` 0 takes a free one (see ``bound_port``)."""

    def __init__(self, host: str, port: int, inferences: Inferences, *, share_port: bool = False) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, got {port}.")
        self.address = f"{host}:{port}"
        self.inferences = inferences
        #: Several worker processes bind the same port (SO_REUSEPORT) and the kernel spreads the connections;
        #: a single process must not, or a port another process holds would be shared without a word.
        self.share_port = share_port
        self.bound_port: int | None = None
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        """Bind and serve; raises ``RuntimeError`` when the port cannot be bound."""
        limit = settings.PLATFORM_MAX_FRAME_BYTES
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", int(self.share_port)),
        ])
        server.add_generic_rpc_handlers((method_handlers(InferenceServicer(self.inferences)),))
        self.bound_port = server.add_insecure_port(self.address)
        if not self.bound_port:
            raise RuntimeError(f"Could not bind the gRPC port {self.address}.")
        await server.start()
        self._server = server
        logger.info("Serving the Open Inference Protocol over gRPC on %s (port %d)", self.address, self.bound_port)

    async def stop(self, timeout_s: float | None = None, grace_s: float = STOP_GRACE_S) -> None:
        """Shutdown hook: refuse new requests, answer those accepted (within ``timeout_s``), then stop."""
        await self.inferences.drain(timeout_s)
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
