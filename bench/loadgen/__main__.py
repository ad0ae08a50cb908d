"""``python -m bench.loadgen``: one load against a running server, its summary printed."""

from __future__ import annotations

import argparse
import json
import sys

from .. import pinning
from . import __doc__ as package_doc
from .results import format_line
from .runner import run_load
from .spec import LoadError, LoadSpec


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=package_doc.split("\n\n")[0])
    parser.add_argument("url", help="WebSocket URL, e.g. ws://127.0.0.1:8000/ws/v1/predict/")
    parser.add_argument("--model", required=True)
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--encoding", choices=["json", "msgpack"], default="json")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--in-flight", type=int, default=8, help="closed loop: requests in flight per connection")
    parser.add_argument("--rate", type=float, default=None, help="open loop: aggregate requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="measurement window, seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before the window, not measured")
    parser.add_argument("--processes", type=int, default=1, help="client processes")
    parser.add_argument("--cpus", default="none", help="CPUs the client processes run on, e.g. 1 or 2-3")
    parser.add_argument("--server-pid", type=int, default=None,
                        help="report this process's CPU (with its children's), RSS and CPU affinity")
    parser.add_argument("--json", metavar="PATH", help="write the summary here as JSON")
    args = parser.parse_args(argv)
    try:
        client_cpus = pinning.parse_cpu_list(args.cpus)
    except pinning.PinningError as exc:
        parser.error(str(exc))
    spec = LoadSpec(
        url=args.url, model=args.model, rows=args.rows, encoding=args.encoding, connections=args.connections,
        in_flight=args.in_flight, rate_per_s=args.rate, duration_s=args.duration, warmup_s=args.warmup,
        processes=args.processes,
    )
    try:
        summary = run_load(spec, server_pid=args.server_pid, client_cpus=client_cpus).summary()
    except (LoadError, ValueError, OSError) as exc:
        sys.exit(f"loadgen: {exc}")
    print(format_line(summary))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=2)


if __name__ == "__main__":
    main()
