"""The servers the platform's ``/v2`` is compared with, in an environment of their own.

MLServer 1.7.1 with its scikit-learn runtime and adaptive batching, and the
naive FastAPI app (:mod:`.naive_app`), are installed into a virtual
environment apart from the platform's (MLServer pins its own FastAPI,
protobuf and gRPC), made once and reused while its requirements stay the
same. MLServer 1.7.1's inference worker crashes with "There is no current
event loop" under uvloop 0.22 and later, hence the pin.

Both serve the platform's own demo iris model (same data, same estimator),
exported with joblib, which is what MLServer's scikit-learn runtime loads.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from .. import side_environment
from ..pinning import under_taskset
from ..servers import REPO_ROOT, free_port, tail

REQUIREMENTS = ("mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop<0.22", "joblib", "scikit-learn", "numpy")
#: MLServer's adaptive batching as measured in the comparison: up to 64 rows, waiting up to 2 ms.
MAX_BATCH_SIZE = 64
MAX_BATCH_TIME_S = 0.002
START_TIMEOUT_S = 120.0


class CompetitorError(Exception):
    """The other environment could not be made, or a server in it did not start."""


def environment(directory: Path) -> Path:
    """The Python of the competitors' virtual environment under ``directory``, made if missing or stale."""
    try:
        return side_environment.python_of(
            directory, REQUIREMENTS, timeout_s=1800,
            announce=lambda: print(f"bench: installing MLServer into {directory} (once)", flush=True))
    except side_environment.SideEnvironmentError as exc:
        raise CompetitorError(str(exc)) from exc


def export_iris(directory: Path) -> Path:
    """The platform's demo iris model, trained as ``load_demo_models`` trains it, saved with joblib."""
    import joblib

    from inference.demo import train_iris

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.joblib"
    joblib.dump(train_iris().estimator, path)
    return path


@dataclass
class Competitor:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def infer_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2/models/iris/infer"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _start(name: str, command: list[str], cwd: Path, env: dict[str, str], port: int, ready_path: str,
           log_dir: Path, cpus: Collection[int] | None) -> Competitor:
    log = log_dir / f"{name}.log"
    with open(log, "ab") as output:
        process = subprocess.Popen(under_taskset(cpus, command), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                   stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    competitor = Competitor(name, port, process, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}", timeout=2) as response:
                if response.status == 200:
                    return competitor
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    competitor.stop()
    raise CompetitorError(f"{name} did not become ready. The end of its log:\n{tail(log)}")


def start_mlserver(python: Path, model_path: Path, work_dir: Path, log_dir: Path,
                   cpus: Collection[int] | None) -> Competitor:
    """MLServer serving ``model_path`` as ``iris`` with adaptive batching, on ``cpus``."""
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    model_dir = work_dir / "mlserver" / "iris"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": "iris", "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": str(model_path)},
        "max_batch_size": MAX_BATCH_SIZE, "max_batch_time": MAX_BATCH_TIME_S,
    }))
    (work_dir / "mlserver" / "settings.json").write_text(json.dumps({
        "http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port, "host": "127.0.0.1",
    }))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    mlserver = str(python.parent / "mlserver")
    return _start("mlserver", [mlserver, "start", str(work_dir / "mlserver")], work_dir, env, http_port,
                  "/v2/models/iris/ready", log_dir, cpus)


def start_naive(python: Path, model_path: Path, work_dir: Path, log_dir: Path,
                cpus: Collection[int] | None) -> Competitor:
    """The naive FastAPI app under uvicorn (one process, no access log), on ``cpus``."""
    port = free_port()
    env = {**os.environ, "NAIVE_MODEL_PATH": str(model_path), "PYTHONUNBUFFERED": "1"}
    app_dir = REPO_ROOT / "bench" / "http_compare"
    command = [str(python), "-m", "uvicorn", "--app-dir", str(app_dir), "--host", "127.0.0.1", "--port", str(port),
               "--no-access-log", "--log-level", "warning", "naive_app:app"]
    return _start("naive-fastapi", command, work_dir, env, port, "/docs", log_dir, cpus)
