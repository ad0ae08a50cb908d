"""Model lifecycle: register, activate, roll back and retire versions, the one way every entry point takes.

The admin, the management commands and the deployment API all call these
functions, so the rules hold however a change arrives:

- an artifact is validated (``inference.validation``) before anything serves
  it; one that fails is recorded as a *failed* version with the reason, and
  nothing that serves changes;
- artifacts are stored by content, ``<model>/<sha256>.<skops|keras>``, so a
  version's file is never overwritten by another's;
- every change runs in one transaction with the model's row locked, is
  recorded as a ``DeploymentEvent`` (who, what, when, from where), and sends
  ``catalog_changed`` once the transaction commits, so every server process
  reconciles what it serves with the registry;
- a model has at most one active version (also a database constraint); the
  active version is retired only by naming its replacement;
- a version's file is checked against its SHA-256 before it is activated: a
  file whose bytes changed since upload fails the version, with the reason;
- rolling back activates the version that was active before the current one
  (the most recent one, per the audit events, that is still staged), so two
  roll-backs in a row return to where they started.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO

from django.core.exceptions import ValidationError
from django.db import transaction

from .artifacts import artifact_path, verify_checksum
from .exceptions import (
    ArtifactError,
    DeploymentConflict,
    InvalidDeployment,
    UnknownModel,
    VersionFailed,
)
from .models import DeploymentEvent, MLModel, ModelVersion
from .signals import catalog_changed
from .uploads import SUFFIXES, ReceivedArtifact, receive
from .validation import ValidatedArtifact, validate

logger = logging.getLogger(__name__)

#: Where a change came from, as the audit records it ("guard": the automatic abort of a failing canary).
SOURCES = ("admin", "command", "api", "guard")
#: What a staff user needs to deploy, in the admin and through the API.
DEPLOY_PERMISSION = "inference.change_modelversion"
Status = ModelVersion.Status
# The audit's actions as the plain strings the database holds (mypy sees Django's choices as tuples).
_Action = DeploymentEvent.Action
REGISTERED, FAILED, ACTIVATED, ROLLED_BACK, RETIRED = (
    str(action) for action in (_Action.REGISTERED, _Action.FAILED, _Action.ACTIVATED, _Action.ROLLED_BACK,
                               _Action.RETIRED)
)


@dataclass(frozen=True)
class ModelSchema:
    """What a new model needs besides its name: registered together with its first version."""

    task: str
    inputs: list[str]
    outputs: str
    description: str = ""
    sample_inputs: list[list[float]] | None = field(default=None)


@dataclass(frozen=True)
class _Audit:
    actor: str
    source: str
    address: str

    @classmethod
    def of(cls, actor: str, source: str, address: str) -> _Audit:
        if source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, not {source!r}.")
        if not actor:
            raise ValueError("Every change needs an actor: the user, API key or command that makes it.")
        # The audit columns' widths: a longer value is cut, never refused.
        return cls(actor[:150], source, (address or "")[:64])

    def record(self, version: ModelVersion, action: str, detail: str = "") -> DeploymentEvent:
        return DeploymentEvent.objects.create(
            model=version.model, version=version, version_number=version.version, action=action,
            actor=self.actor, source=self.source, address=self.address, detail=detail,
        )


def _lock(model_id: int) -> None:
    """Serialise changes to one model's versions until the transaction ends (a no-op on SQLite, which
    runs one writing transaction at a time anyway)."""
    list(MLModel.objects.select_for_update().filter(pk=model_id).values_list("pk", flat=True))


def _announce(model: MLModel, action: str, version: int) -> None:
    """Tell every server process, once the change is committed, that ``model``'s catalog changed."""
    name = model.name
    transaction.on_commit(
        lambda: catalog_changed.send(sender=MLModel, model=name, action=action, version=version)
    )


# -- lookups ----------------------------------------------------------------------------------------------


def get_model(model: MLModel | str) -> MLModel:
    """The registered model of that name (or the instance itself); ``UnknownModel`` if there is none."""
    if isinstance(model, MLModel):
        return model
    found = MLModel.objects.filter(name=model).first()
    if found is None:
        raise UnknownModel(f"There is no model named {model!r}.")
    return found


def get_version(model: MLModel | str, version: ModelVersion | int) -> ModelVersion:
    """Version ``version`` of ``model``; ``UnknownModel`` if it has none of that number."""
    mlmodel = get_model(model)
    if isinstance(version, ModelVersion):
        return version
    found = mlmodel.versions.filter(version=version).first()
    if found is None:
        raise UnknownModel(f"{mlmodel.name} has no version {version}.")
    return found


#: How an activation's audit event names the version it replaced; ``rollback_target`` reads it back, so
#: that a version activated before the audit existed (the demo models, migrated versions) can be rolled back to.
REPLACED_DETAIL = {ACTIVATED: "replaces v{}", ROLLED_BACK: "rolled back from v{}"}
_REPLACED = re.compile(r"^(?:replaces|rolled back from) v(\d+)$")


def rollback_target(model: MLModel | str) -> ModelVersion | None:
    """The version a roll-back would activate: the latest other one that was active and is still staged."""
    mlmodel = get_model(model)
    active = mlmodel.active_version
    staged = {v.version: v for v in mlmodel.versions.filter(status=Status.STAGED)}
    history = (
        DeploymentEvent.objects.filter(model=mlmodel, action__in=[ACTIVATED, ROLLED_BACK])
        .order_by("-at", "-id")
        .values_list("version_number", "detail")
    )
    for number, detail in history:
        replaced = _REPLACED.match(detail)
        # Newest first: the version an activation made active, then the one it replaced.
        for candidate in (number, int(replaced.group(1)) if replaced else None):
            if candidate in staged and (active is None or candidate != active.version):
                return staged[candidate]
    return None


# -- registering --------------------------------------------------------------------------------------------


def _model_for(model: MLModel | str, schema: ModelSchema | None) -> tuple[MLModel, bool]:
    """The model to register a version of, created from ``schema`` if new; and whether it was created."""
    if isinstance(model, MLModel):
        return model, False
    existing = MLModel.objects.filter(name=model).first()
    if existing is not None:
        if schema is not None and (existing.task != schema.task or list(existing.inputs) != list(schema.inputs)):
            raise InvalidDeployment(
                f"A model named {model!r} already exists with task {existing.task} and inputs "
                f"({', '.join(existing.inputs)}), which differ from those given; register under a new name "
                "to change a model's schema."
            )
        return existing, False
    if schema is None:
        raise InvalidDeployment(
            f"There is no model named {model!r}; to create it with this version, give its task, inputs and outputs."
        )
    created = MLModel(
        name=model, task=schema.task, inputs=list(schema.inputs), outputs=schema.outputs,
        description=schema.description, sample_inputs=schema.sample_inputs,
    )
    try:
        created.full_clean()
    except ValidationError as exc:
        problems = "; ".join(f"{name}: {' '.join(errors)}" for name, errors in exc.message_dict.items())
        raise InvalidDeployment(f"The new model {model!r} cannot be created: {problems}") from exc
    created.save()
    return created, True


def _previous_classes(mlmodel: MLModel) -> list[str] | None:
    """The class labels of the model's latest usable version, for a version registered without its own."""
    for metadata in mlmodel.versions.exclude(status=Status.FAILED).values_list("metadata", flat=True):
        classes = (metadata or {}).get("classes")
        if classes:
            return [str(label) for label in classes]
    return None


def _store(received: ReceivedArtifact, mlmodel: MLModel, framework: str) -> str:
    """Move a validated upload to its content-addressed place in the store; return the registry's path."""
    relative = f"{mlmodel.name}/{received.checksum}{SUFFIXES[framework]}"
    target = artifact_path(relative)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(received.path, target)
    return relative


def _next_number(mlmodel: MLModel) -> int:
    latest = mlmodel.versions.order_by("-version").values_list("version", flat=True).first()
    return (latest or 0) + 1


def register(
    model: MLModel | str,
    artifact: str | os.PathLike[str] | IO[bytes],
    framework: str,
    *,
    actor: str,
    source: str,
    address: str = "",
    activate: bool = False,
    classes: Sequence[str] | None = None,
    schema: ModelSchema | None = None,
    filename: str = "",
) -> ModelVersion:
    """Validate ``artifact`` and record it as the next version of ``model``: staged, or active with ``activate``.

    ``model`` is a model or a name; a new name needs ``schema``. ``classes``
    labels a classifier's probability columns (Keras needs them; a new Keras
    version of a model reuses its previous version's). A failed validation is
    recorded as a failed version and raised as ``VersionFailed``.
    """
    audit = _Audit.of(actor, source, address)
    if framework not in SUFFIXES:
        raise InvalidDeployment(f"Unknown framework {framework!r}; choose one of {', '.join(SUFFIXES)}.")
    if isinstance(artifact, str | os.PathLike):
        artifact = os.fspath(artifact)
        if not os.path.isfile(artifact):
            raise InvalidDeployment(f"There is no artifact file at {artifact}.")
    mlmodel, created = _model_for(model, schema)
    if not classes and framework == "keras":
        classes = _previous_classes(mlmodel)

    received: ReceivedArtifact | None = None
    try:
        received = receive(artifact, framework=framework, filename=filename)
        checked: ValidatedArtifact | ArtifactError = validate(
            received, framework=framework, model=mlmodel, classes=classes
        )
    except ArtifactError as exc:
        checked = exc
    filename = (received.filename if received else filename) or filename

    with transaction.atomic():
        _lock(mlmodel.pk)
        version = ModelVersion(
            model=mlmodel, version=_next_number(mlmodel), framework=framework, created_by=audit.actor,
            checksum=received.checksum if received else "", size_bytes=received.size_bytes if received else None,
        )
        version.metadata = {"filename": filename} if filename else {}
        if isinstance(checked, ValidatedArtifact) and received is not None:
            version.artifact = _store(received, mlmodel, framework)
            version.status = Status.STAGED
            version.metadata.update(classes=checked.classes, output_columns=checked.output_columns)
            version.save()
            detail = (f"{framework} artifact {filename or '(unnamed)'}, {version.size_bytes} bytes, "
                      f"sha256 {version.checksum}")
            audit.record(version, REGISTERED, detail + ("; model created" if created else ""))
            _announce(mlmodel, REGISTERED, version.version)
        else:
            version.status = Status.FAILED
            version.failure_reason = str(checked)
            version.save()
            audit.record(version, FAILED, version.failure_reason)
            _announce(mlmodel, FAILED, version.version)
    if received is not None:
        # A stored file was moved away already; a refused one is never kept (its uploader has it).
        received.discard()
    if isinstance(checked, ArtifactError):
        logger.warning("%s failed validation: %s", version, checked)
        raise VersionFailed(
            f"{version} failed validation: {checked}", model=mlmodel.name, version=version.version, reason=checked
        ) from checked
    logger.info("Registered %s by %s (%s)", version, audit.actor, audit.source)
    return _activate(version, audit) if activate else version


# -- changing what serves ---------------------------------------------------------------------------------


def _fail(version: ModelVersion, error: ArtifactError, audit: _Audit) -> VersionFailed:
    """Record ``version`` as failed for ``error`` (committed on its own) and return the error to raise."""
    with transaction.atomic():
        _lock(version.model_id)
        version.refresh_from_db()
        version.status = Status.FAILED
        version.is_active = False
        version.failure_reason = str(error)
        version.save(update_fields=["status", "is_active", "failure_reason"])
        audit.record(version, FAILED, version.failure_reason)
        _announce(version.model, FAILED, version.version)
    logger.error("%s is now failed: %s", version, error)
    return VersionFailed(f"{version} is now marked failed: {error}", model=version.model.name,
                         version=version.version, reason=error)


def _verified(version: ModelVersion, audit: _Audit) -> None:
    """Check the file of a version about to serve; a changed or missing file fails the version."""
    try:
        verify_checksum(version)
    except ArtifactError as exc:
        raise _fail(version, exc, audit) from exc


def _servable(version: ModelVersion) -> None:
    if version.status == Status.FAILED:
        raise DeploymentConflict(
            f"{version} failed validation and cannot serve: {version.failure_reason} Register a corrected artifact."
        )
    if version.status == Status.RETIRED:
        raise DeploymentConflict(f"{version} is retired for good; register its artifact again to serve it.")


def _switch(version: ModelVersion, audit: _Audit, action: str) -> ModelVersion:
    """Make ``version`` the active one of its model, in one transaction with its audit event."""
    with transaction.atomic():
        _lock(version.model_id)
        version.refresh_from_db()
        _servable(version)
        previous = version.model.versions.filter(is_active=True).exclude(pk=version.pk).first()
        version.activate()
        detail = REPLACED_DETAIL[action].format(previous.version) if previous else "no version was active"
        audit.record(version, action, detail)
        _announce(version.model, action, version.version)
    logger.info("%s is now active (%s by %s, %s)", version, action, audit.actor, detail)
    return version


def activate(
    model: MLModel | str, version: ModelVersion | int, *, actor: str, source: str, address: str = ""
) -> ModelVersion:
    """Make ``version`` of ``model`` the active one; the version it replaces stays staged.

    Activating the version that is already active changes nothing and records nothing.
    """
    return _activate(get_version(model, version), _Audit.of(actor, source, address))


def _activate(target: ModelVersion, audit: _Audit) -> ModelVersion:
    if target.is_active:
        return target
    _servable(target)
    _verified(target, audit)
    return _switch(target, audit, ACTIVATED)


def rollback(model: MLModel | str, *, actor: str, source: str, address: str = "") -> ModelVersion:
    """Activate the version that was active before the current one; return it."""
    audit = _Audit.of(actor, source, address)
    mlmodel = get_model(model)
    target = rollback_target(mlmodel)
    if target is None:
        raise DeploymentConflict(
            f"{mlmodel.name} has no earlier active version that is still staged to roll back to; "
            "activate a version by its number instead."
        )
    _verified(target, audit)
    return _switch(target, audit, ROLLED_BACK)


def retire(
    model: MLModel | str,
    version: ModelVersion | int,
    *,
    actor: str,
    source: str,
    address: str = "",
    replacement: ModelVersion | int | None = None,
) -> ModelVersion:
    """Take ``version`` out of service for good; the active version only together with its ``replacement``.

    Its file stays in the store (other versions may share it, and the audit may need it).
    """
    audit = _Audit.of(actor, source, address)
    target = get_version(model, version)
    if target.status == Status.RETIRED:
        raise DeploymentConflict(f"{target} is already retired.")
    successor: ModelVersion | None = None
    if target.is_active:
        if replacement is None:
            raise DeploymentConflict(
                f"{target} is the active version of {target.model.name}: name the version that replaces it, "
                "or activate another version first."
            )
        successor = get_version(target.model, replacement)
        if successor.pk == target.pk:
            raise DeploymentConflict(f"{target} cannot replace itself; name another version.")
        _servable(successor)
        _verified(successor, audit)
    with transaction.atomic():
        _lock(target.model_id)
        target.refresh_from_db()
        if target.is_active and successor is None:
            raise DeploymentConflict(f"{target} became the active version meanwhile; name its replacement.")
        if successor is not None:
            _switch(successor, audit, ACTIVATED)
        target.status = Status.RETIRED
        target.is_active = False
        target.save(update_fields=["status", "is_active"])
        # A retired version no longer takes part in a rollout either.
        MLModel.objects.filter(pk=target.model_id, shadow_version=target.version).update(shadow_version=None)
        MLModel.objects.filter(pk=target.model_id, canary_version=target.version).update(canary_version=None)
        audit.record(target, RETIRED, f"replaced by v{successor.version}" if successor else "")
        _announce(target.model, RETIRED, target.version)
    logger.info("%s retired by %s (%s)", target, audit.actor, audit.source)
    return target


def mark_failed(
    model: MLModel | str, version: ModelVersion | int, reason: ArtifactError, *, actor: str, source: str,
    address: str = "",
) -> ModelVersion:
    """Record that ``version`` cannot serve (e.g. its file changed, found when a server loads it)."""
    target = get_version(model, version)
    _fail(target, reason, _Audit.of(actor, source, address))
    target.refresh_from_db()
    return target


__all__ = [
    "DEPLOY_PERMISSION", "ModelSchema", "SOURCES", "activate", "get_model", "get_version",
    "mark_failed", "register", "retire", "rollback", "rollback_target",
]
