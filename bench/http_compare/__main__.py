"""``python -m bench.http_compare``: the HTTP comparison alone, with its results as JSON on stdout."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from .. import pinning, servers
from .comparison import HttpOptions, scenario, summary


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.http_compare", description=__doc__)
    parser.add_argument("--connections", default="10,50")
    parser.add_argument("--duration", type=float, default=HttpOptions.duration_s)
    parser.add_argument("--repeats", type=int, default=HttpOptions.repeats)
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--client-cpus", default="1")
    parser.add_argument("--environment", type=Path, default=HttpOptions.environment,
                        help="where the virtual environment of MLServer and FastAPI is (made if missing)")
    args = parser.parse_args()
    placement = pinning.plan(args.server_cpus, args.client_cpus)
    options = HttpOptions(connections=[int(c) for c in args.connections.split(",")], duration_s=args.duration,
                          repeats=args.repeats, environment=args.environment.resolve())  # the servers run elsewhere
    work = Path(tempfile.mkdtemp(prefix="bench-http-main-"))
    prepared = servers.prepare_data(work)
    results = scenario(options, prepared, work, placement)
    print(json.dumps(results, indent=2))
    print(summary(results))


if __name__ == "__main__":
    main()
