"""The deployment API through a real daphne process and a real HTTP client (urllib)."""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from pathlib import Path

from tests.support import artifacts
from tests.support.commands import manage

NEW_MODEL = {"task": "classification", "inputs": "a,b,c", "outputs": "label and probabilities"}


def multipart(fields: dict[str, str], files: dict[str, Path]) -> tuple[bytes, str]:
    boundary = secrets.token_hex(16)
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, path in files.items():
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{path.name}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n")
        parts.append(head.encode() + path.read_bytes() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def call(server, method: str, path: str, key: str, *, fields=None, files=None) -> tuple[int, dict]:
    body, content_type = multipart(fields or {}, files or {}) if files else (b"", "application/json")
    request = urllib.request.Request(
        f"{server.url}{path}", data=body if method == "POST" else None, method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": content_type},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def create_key(server, name: str, *extra: str) -> str:
    return manage("create_api_key", name, *extra, env=server.env).stdout.strip()


def test_a_pipeline_deploys_through_a_real_server(start_daphne, tmp_path):
    server = start_daphne(demo_models=False)
    deploy_key = create_key(server, "ci", "--deploy")
    predict_key = create_key(server, "frontend")
    good = artifacts.skops_file(tmp_path / "good.skops")
    bad = artifacts.pickle_posing_as_skops(tmp_path / "bad.skops")

    status, body = call(server, "POST", "/api/v1/models/shop/versions", predict_key,
                        fields={"framework": "sklearn", **NEW_MODEL}, files={"artifact": good})
    assert status == 403 and "not deploy models" in body["error"]["message"]

    status, body = call(server, "POST", "/api/v1/models/shop/versions", deploy_key,
                        fields={"framework": "sklearn", "activate": "true", **NEW_MODEL}, files={"artifact": good})
    assert status == 201, body
    assert body["created_model"] is True and body["version"]["status"] == "active"

    status, body = call(server, "POST", "/api/v1/models/shop/versions", deploy_key,
                        fields={"framework": "sklearn"}, files={"artifact": bad})
    assert status == 400 and body["version"]["status"] == "failed"
    assert "pickle or joblib" in body["version"]["failure_reason"]

    status, body = call(server, "POST", "/api/v1/models/shop/versions", deploy_key,
                        fields={"framework": "sklearn"}, files={"artifact": good})
    assert status == 201 and body["version"]["version"] == 3
    assert call(server, "POST", "/api/v1/models/shop/versions/3/activate", deploy_key)[0] == 200
    status, body = call(server, "POST", "/api/v1/models/shop/rollback", deploy_key)
    assert status == 200 and body["version"]["version"] == 1
    status, body = call(server, "POST", "/api/v1/models/shop/versions/3/retire", deploy_key)
    assert status == 200 and body["active_version"] == 1

    status, body = call(server, "GET", "/api/v1/models/shop", deploy_key)
    assert status == 200
    assert [(v["version"], v["status"]) for v in body["versions"]] == [(3, "retired"), (2, "failed"), (1, "active")]
    assert {(e["actor"], e["source"], e["address"]) for e in body["events"]} == {("key:ci", "api", "127.0.0.1")}

