#!/usr/bin/env python
"""A minimal prediction client: send one row, print the reply.

    python scripts/predict.py --url ws://127.0.0.1:8000/ws/v1/predict/iris/ 5.1 3.5 1.4 0.2

The API key comes from --key, $PLATFORM_API_KEY or data/demo-credentials.txt.
A thin wrapper around streaming.client (docs/client.md); an error reply is
printed the same way and the exit status is 1.
"""

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Run as a file (python scripts/predict.py), not as an installed module: the client lives in the repository.
sys.path.insert(0, str(REPO_ROOT))

from streaming.client import ClientError, PredictionClient, RequestFailed  # noqa: E402


def demo_key() -> str | None:
    path = Path(os.environ.get("PLATFORM_DATA_DIR", REPO_ROOT / "data"))
    creds = path / "demo-credentials.txt"
    if creds.exists():
        for line in creds.read_text().splitlines():
            if line.startswith("api_key="):
                return line.split("=", 1)[1]
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="ws://127.0.0.1:8000/ws/v1/predict/iris/")
    parser.add_argument("--key", default=os.environ.get("PLATFORM_API_KEY") or demo_key())
    parser.add_argument("--model", help="Model name, when the URL names none.")
    parser.add_argument("--version", type=int, help="A loaded version of the model (default: the active one).")
    parser.add_argument("--encoding", choices=("json", "msgpack"), default="json")
    parser.add_argument("values", nargs="+", type=float)
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        async with PredictionClient(args.url, args.key, encoding=args.encoding) as client:
            reply = await client.predict(args.model, [args.values], version=args.version)
    except RequestFailed as exc:
        error = {"code": exc.code, "message": exc.message}
        if exc.retry_after_ms is not None:
            error["retry_after_ms"] = exc.retry_after_ms
        print(json.dumps({"type": "error", "id": exc.request_id, "error": error}, indent=2))
        return 1
    except (ClientError, OSError) as exc:
        print(f"predict.py: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(reply, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
