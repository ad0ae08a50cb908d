"""What a server process serves: its models and their loaded versions, as the pool holds them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .batching import DynamicBatcher
from .rollout.plan import NO_ROLLOUT, Rollout
from .schema import InputSchema

#: The label value observers use for a model or version this process does not serve.
NO_LABEL = ""


@dataclass
class ServedVersion:
    """One model version as this process serves it (or failed to)."""

    name: str
    version: int
    task: str
    schema: InputSchema
    outputs: str
    classes: list[str] | None = None
    batcher: DynamicBatcher | None = None
    device: str = "cpu"
    #: What computes its batches: "onnxruntime", "scikit-learn" or "tensorflow".
    engine: str = ""
    error: str | None = None
    load_ms: float = 0.0

    @property
    def ready(self) -> bool:
        return self.batcher is not None

    @property
    def labels(self) -> tuple[str, str]:
        """The bounded ``(model, version)`` label values of requests this version serves."""
        return self.name, str(self.version)


@dataclass
class ServedModel:
    """A registered model: its schema and which version serves by default."""

    name: str
    task: str
    inputs: list[str]
    outputs: str
    active_version: int | None
    versions: dict[int, ServedVersion] = field(default_factory=dict)
    #: The version the active one replaced, kept loaded for an instant rollback.
    standby_version: int | None = None
    #: Versions the registry holds, not retired, that this process does not keep
    #: loaded: a request naming one is answered ``model_unavailable``, not ``unknown_model``.
    unloaded: frozenset[int] = frozenset()
    #: Its shadow and canary versions, as the registry says; each serves only once loaded here.
    rollout: Rollout = NO_ROLLOUT

    def describe(self) -> dict[str, Any]:
        return {"version": self.active_version, "inputs": self.inputs, "outputs": self.outputs}


@dataclass(frozen=True, slots=True)
class VersionState:
    """A moment's view of one served version, for observers (the dashboard, the metrics)."""

    version: int
    loaded: bool
    device: str
    queue_depth: int
    computing_rows: int


@dataclass(frozen=True, slots=True)
class ModelState:
    """A moment's view of one served model and its versions."""

    name: str
    active_version: int | None
    versions: tuple[VersionState, ...]
