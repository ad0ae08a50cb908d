"""Run by the ``kserve`` environment's Python (tests/support/kserve_env.py), not by the platform's.

Reads ``{"url", "key", "requests": [{"model", "rows"}]}`` as JSON on stdin,
asks the server with kserve's ``InferenceRESTClient`` (protocol v2) whether
it and each model are ready, sends each request as one FP64 ``[N, F]``
tensor, and writes what the client read back as JSON on stdout.
"""

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


def plain(value):
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if hasattr(value, "item") else value


async def main(job):
    headers = {"Authorization": f"Bearer {job['key']}"}
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    answers = {"server_ready": await client.is_server_ready(job["url"], headers=headers), "models": []}
    for request in job["requests"]:
        rows = np.array(request["rows"], dtype=np.float64)
        tensor = InferInput("input", list(rows.shape), "FP64")
        tensor.set_data_from_numpy(rows, binary_data=False)
        response = await client.infer(job["url"], InferRequest(request["model"], [tensor], request_id=request["id"]),
                                      model_name=request["model"], headers=headers)
        answers["models"].append({
            "ready": await client.is_model_ready(job["url"], request["model"], headers=headers),
            "id": response.id, "model_name": response.model_name,
            "outputs": {output.name: [plain(v) for v in output.as_numpy().ravel()] for output in response.outputs},
            "shapes": {output.name: list(output.shape) for output in response.outputs},
        })
    await client.close()
    return answers


if __name__ == "__main__":
    json.dump(asyncio.run(main(json.load(sys.stdin))), sys.stdout)
