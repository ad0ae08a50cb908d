#!/usr/bin/env python
"""A minimal prediction client: send one row, print the reply.

    python scripts/predict.py --url ws://127.0.0.1:8000/ws/v1/predict/iris/ 5.1 3.5 1.4 0.2

The API key comes from --key, $PLATFORM_API_KEY or data/demo-credentials.txt.
"""

import argparse
import asyncio
import json
import os
from pathlib import Path

import websockets


def demo_key() -> str | None:
    path = Path(os.environ.get("PLATFORM_DATA_DIR", Path(__file__).resolve().parent.parent / "data"))
    creds = path / "demo-credentials.txt"
    if creds.exists():
        for line in creds.read_text().splitlines():
            if line.startswith("api_key="):
                return line.split("=", 1)[1]
    return None


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="ws://127.0.0.1:8000/ws/v1/predict/iris/")
    parser.add_argument("--key", default=os.environ.get("PLATFORM_API_KEY") or demo_key())
    parser.add_argument("--model", help="Model name, when the URL names none.")
    parser.add_argument("values", nargs="+", type=float)
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    async with websockets.connect(args.url, additional_headers=headers) as ws:
        ready = json.loads(await ws.recv())
        request = {"type": "predict", "id": 1, "inputs": [args.values]}
        if args.model:
            request["model"] = args.model
        await ws.send(json.dumps(request))
        print(json.dumps(json.loads(await ws.recv()), indent=2))
        del ready


if __name__ == "__main__":
    asyncio.run(main())
