"""The Kubernetes manifests under deploy/k8s as kustomize builds them: resources in order, namespace set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.commands import REPO_ROOT

K8S_DIR = REPO_ROOT / "deploy" / "k8s"
#: Kustomizations to apply: the platform alone, and with a ServiceMonitor for the Prometheus Operator.
KUSTOMIZATIONS = (K8S_DIR / "base", K8S_DIR / "prometheus-operator")
#: Applied on its own, with the operator's own values.
SECRET_EXAMPLE = K8S_DIR / "secret.example.yaml"


@dataclass(frozen=True)
class Manifest:
    path: Path
    document: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.document["kind"])

    @property
    def name(self) -> str:
        return str(self.document["metadata"]["name"])


def build(kustomization_dir: Path) -> list[Manifest]:
    """What ``kubectl kustomize`` outputs for the features these kustomizations use (resources, namespace)."""
    kustomization = yaml.safe_load((kustomization_dir / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - {"apiVersion", "kind", "namespace", "resources", "labels", "images"}
    if unsupported:
        raise AssertionError(f"{kustomization_dir}: extend tests/deploy/manifests.py for {sorted(unsupported)}")
    manifests: list[Manifest] = []
    for resource in kustomization["resources"]:
        path = (kustomization_dir / resource).resolve()
        if path.is_dir():
            manifests += build(path)
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                manifests.append(Manifest(path, document))
    namespace = kustomization.get("namespace")
    for manifest in manifests:
        if namespace and manifest.kind != "Namespace":
            manifest.document["metadata"]["namespace"] = namespace
        for label in kustomization.get("labels", []):
            manifest.document["metadata"].setdefault("labels", {}).update(label["pairs"])
    return manifests


def every_manifest() -> list[Manifest]:
    """Each resource once, from every kustomization, and the Secret's example."""
    seen: dict[tuple[str, str], Manifest] = {}
    for directory in KUSTOMIZATIONS:
        for manifest in build(directory):
            seen.setdefault((manifest.kind, manifest.name), manifest)
    secret = Manifest(SECRET_EXAMPLE, yaml.safe_load(SECRET_EXAMPLE.read_text()))
    return [*seen.values(), secret]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [m.document for m in every_manifest() if m.kind == kind and (name is None or m.name == name)]
    if len(found) != 1:
        raise AssertionError(f"Expected one {kind} {name or ''}, found {len(found)}.")
    return found[0]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())
