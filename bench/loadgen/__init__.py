"""The load generator: many WebSocket connections against a real server, closed or open loop.

Closed loop (``rate_per_s=None``): every connection keeps ``in_flight``
requests outstanding and sends a new one as each reply arrives, which finds
the server's maximum throughput at that concurrency. Its statistics cover the
requests *answered* inside the measurement window.

Open loop (``rate_per_s`` set): requests are scheduled at a fixed aggregate
rate, spread evenly over the connections and interleaved across client
processes, whatever the server does. Latency is measured from each request's
*scheduled* send time, so time a request spent waiting behind a slow server
(or a late client) counts; its statistics cover the requests *scheduled*
inside the window, and one still unanswered when the drain time runs out is
an error (``no_reply``).

The first ``warmup_s`` seconds are excluded from both. Clients run in
``processes`` separate processes (spawned, each with its own event loop) so
that the client does not share the server's interpreter, pinned to
``client_cpus`` when given so that they do not share its cores either; the
report gives the CPU time the client and the server each used.

- ``spec``: ``LoadSpec``, what one load is;
- ``client``: one client process, its connections and loops;
- ``runner``: ``run_load``, starting the client processes and measuring the server;
- ``results``: ``LoadResult``, the statistics of a window.

Run it against any server that speaks the protocol::

    python -m bench.loadgen ws://127.0.0.1:8000/ws/v1/predict/ --model iris --rows 1 --duration 10 --cpus 1
"""

from .results import NO_REPLY, LoadResult, format_line
from .runner import run_load
from .spec import ID_STRIDE, LoadError, LoadSpec, clock

__all__ = ["ID_STRIDE", "NO_REPLY", "LoadError", "LoadResult", "LoadSpec", "clock", "format_line", "run_load"]
