"""End-to-end benchmark of the platform against the transport ceiling and the naive approach.

- ``bench.loadgen``: the load generator (closed and open loop, many WebSocket
  connections, one or more client processes); ``python -m bench.loadgen``.
- ``bench.ceiling`` and ``bench.naive``: the two ASGI applications the platform
  is compared with, served by the same ``python -m platform_core.server``.
- ``bench.servers``: starting and stopping those servers, and reading the
  prediction log they leave behind.
- ``bench.pinning``: the CPUs the servers and the load generator run on;
  ``bench.procstats``: a process tree's CPU time, RSS and affinity from /proc.
- ``bench.run``: one whole comparison (``make bench``); ``bench.soak``: a fixed
  load for minutes (``make soak``); ``bench.report``: tables and plots.
"""
