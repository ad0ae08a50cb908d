"""The deployment API for pipelines: register, activate, roll back and retire model versions over HTTP.

Routes (``platform_core/urls.py``), JSON out, errors as
``{"error": {"code": ..., "message": ...}}``:

- ``GET  /api/v1/models/<name>``: the model, its versions with their states, its latest audit events;
- ``POST /api/v1/models/<name>/versions``: multipart ``artifact`` and ``framework``, optional
  ``activate``, ``classes``; for a new model also ``task``, ``inputs``, ``outputs`` (and optional
  ``description``, ``sample_inputs``); 201 with the version;
- ``POST /api/v1/models/<name>/versions/<n>/activate``;
- ``POST /api/v1/models/<name>/rollback``;
- ``POST /api/v1/models/<name>/versions/<n>/retire``, with ``replacement`` (JSON or form) to retire the
  active version.

Who may call: an API key with ``can_deploy`` (``Authorization: Bearer <key>``;
a key limited to some models deploys only those, and creates none), or an
active staff user allowed to change model versions, by HTTP Basic or by a
logged-in session that sends its CSRF token. No credentials or bad ones: 401;
a prediction key, a non-staff user, a model outside the key's: 403. Then 404
for an unknown model or version, 400 for a malformed request or an artifact
that failed validation (recorded as a failed version), 413 for one over
``PLATFORM_MAX_ARTIFACT_BYTES``, 409 for a change the version's state forbids.

Every change goes through ``inference.deployment``, audited with the key or
user as actor, source ``api`` and the client's address. Validation loads the
model, so these views are synchronous: Django runs them in a worker thread,
never on the event loop.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import authenticate
from django.core.files.uploadhandler import TemporaryFileUploadHandler
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from inference import deployment
from inference.deployment import DEPLOY_PERMISSION
from inference.exceptions import (
    ArtifactTooLarge,
    DeploymentConflict,
    InvalidDeployment,
    UnknownModel,
    VersionFailed,
)
from inference.models import MLModel, ModelVersion
from inference.uploads import max_artifact_bytes

from .exceptions import DeployRefused
from .models import APIKey, hash_key

_CHALLENGE = 'Bearer realm="deploy", Basic realm="deploy"'


@dataclass(frozen=True)
class Deployer:
    """Who is calling: the audit's actor, and the models they may change (None: every model)."""

    actor: str
    models: frozenset[str] | None


class ArtifactUploadHandler(TemporaryFileUploadHandler):
    """Writes an upload to a temporary file, keeping at most one byte past the artifact limit.

    The registry then refuses it as too large (413, a failed version on record)
    from its declared size, and a runaway upload costs no more disk than the limit.
    """

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        self.kept = 0
        self.room = max_artifact_bytes() + 1

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        if self.kept < self.room:
            piece = raw_data[: self.room - self.kept]
            self.file.write(piece)
            self.kept += len(piece)
        return None


def _error(status: int, code: str, message: str, **extra: Any) -> JsonResponse:
    response = JsonResponse({"error": {"code": code, "message": message}, **extra}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = _CHALLENGE
    return response


def client_address(request: HttpRequest) -> str:
    return str(request.META.get("REMOTE_ADDR") or "")


def _may_deploy(user: Any) -> bool:
    return bool(user.is_active and user.is_staff and user.has_perm(DEPLOY_PERMISSION))


def _staff(user: Any) -> Deployer:
    if not _may_deploy(user):
        raise DeployRefused(
            f"User {user.get_username()!r} may not deploy models: only active staff users with permission to "
            "change model versions may.", status=403, code="forbidden",
        )
    return Deployer(actor=user.get_username(), models=None)


def _key(token: str) -> Deployer:
    key = APIKey.objects.active().filter(key_hash=hash_key(token)).first() if 0 < len(token) <= 256 else None
    if key is None:
        raise DeployRefused("The API key is not valid: it is unknown, revoked or expired.", status=401,
                            code="unauthorized")
    if not key.can_deploy:
        raise DeployRefused(
            f"The API key {key.name!r} may make predictions but not deploy models; use a key created with "
            "`manage.py create_api_key --deploy`.", status=403, code="forbidden",
        )
    APIKey.objects.filter(pk=key.pk).update(last_used_at=timezone.now())
    names = frozenset(key.allowed_models.values_list("name", flat=True))
    return Deployer(actor=f"key:{key.name}", models=names or None)


def _basic(request: HttpRequest, credentials: str) -> Deployer:
    try:
        username, _, password = base64.b64decode(credentials, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise DeployRefused("The Basic credentials are not base64 of 'user:password'.", status=401,
                            code="unauthorized") from None
    user = authenticate(request, username=username, password=password)
    if user is None:
        raise DeployRefused("The user name or password is wrong.", status=401, code="unauthorized")
    return _staff(user)


def _deployer(request: HttpRequest) -> Deployer:
    """Authenticate the caller by bearer key, Basic credentials or staff session (with its CSRF token)."""
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer":
        return _key(credentials.strip())
    if scheme.lower() == "basic":
        return _basic(request, credentials.strip())
    if header:
        raise DeployRefused("Use 'Authorization: Bearer <API key>' or HTTP Basic authentication.", status=401,
                            code="unauthorized")
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        raise DeployRefused(
            "Authentication is required: an API key with deploy permission (Authorization: Bearer <key>), "
            "or a staff user's credentials.", status=401, code="unauthorized",
        )
    deployer = _staff(user)
    # A browser session's cookie travels on its own: the CSRF token proves the page sent the request.
    if request.method not in ("GET", "HEAD") and CsrfViewMiddleware(HttpResponse).process_view(
        request, None, (), {}
    ) is not None:
        raise DeployRefused("The CSRF check failed: send the csrftoken cookie's value in an X-CSRFToken header.",
                            status=403, code="forbidden")
    return deployer


View = Callable[..., HttpResponse]


def deploy_endpoint(method: str) -> Callable[[View], View]:
    """Authenticate, authorise for the model in the URL, and answer domain errors as JSON."""

    def decorate(view: View) -> View:
        @csrf_exempt  # Bearer and Basic need no CSRF token; sessions are checked in _deployer
        @functools.wraps(view)
        def endpoint(request: HttpRequest, name: str, **kwargs: Any) -> HttpResponse:
            if request.method != method:
                response = _error(405, "method_not_allowed", f"Use {method} on this URL.")
                response["Allow"] = method
                return response
            # Before anything reads the body: uploads are cut at the artifact limit.
            request.upload_handlers = [ArtifactUploadHandler(request)]
            try:
                deployer = _deployer(request)
                if deployer.models is not None and name not in deployer.models:
                    raise DeployRefused(f"This API key may not deploy {name!r}.", status=403, code="forbidden")
                return view(request, deployer, name, **kwargs)
            except DeployRefused as exc:
                return _error(exc.status, exc.code, str(exc))
            except UnknownModel as exc:
                return _error(404, "not_found", str(exc))
            except VersionFailed as exc:
                too_large = isinstance(exc.reason, ArtifactTooLarge)
                return _error(413 if too_large else 400, "too_large" if too_large else "validation_failed",
                              str(exc), version=_version(name, exc.version))
            except InvalidDeployment as exc:
                return _error(400, "invalid_request", str(exc))
            except DeploymentConflict as exc:
                return _error(409, "conflict", str(exc))

        return endpoint

    return decorate


def _version(name: str, number: int) -> dict[str, Any]:
    return describe_version(deployment.get_version(name, number))


def _audit(request: HttpRequest, deployer: Deployer) -> dict[str, str]:
    return {"actor": deployer.actor, "source": "api", "address": client_address(request)}


def _params(request: HttpRequest) -> dict[str, Any]:
    """The body's fields: a JSON object, or form fields."""
    if request.content_type == "application/json":
        try:
            document = json.loads(request.body or b"{}")
        except ValueError as exc:
            raise InvalidDeployment(f"The request body is not valid JSON: {exc}.") from exc
        if not isinstance(document, dict):
            raise InvalidDeployment("The request body must be a JSON object.")
        return document
    return {name: request.POST.get(name) for name in request.POST}


def _flag(value: Any) -> bool:
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


def _names(value: Any, field: str) -> list[str] | None:
    """A list of names from a JSON list or a comma-separated string."""
    if value in (None, ""):
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError as exc:
                raise InvalidDeployment(f"{field} is not a valid JSON list: {exc}.") from exc
        else:
            return [item.strip() for item in text.split(",") if item.strip()]
    if not isinstance(value, list):
        raise InvalidDeployment(f"{field} must be a list of names, or names separated by commas.")
    return [str(item) for item in value]


def _number(value: Any, field: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidDeployment(f"{field} must be a version number, not {value!r}.") from None


def _schema(params: dict[str, Any]) -> deployment.ModelSchema | None:
    task, inputs, outputs = params.get("task"), _names(params.get("inputs"), "inputs"), params.get("outputs")
    if not (task or inputs or outputs):
        return None
    if not (task and inputs and outputs):
        raise InvalidDeployment("A new model needs all of task, inputs and outputs.")
    samples = params.get("sample_inputs")
    if isinstance(samples, str) and samples:
        try:
            samples = json.loads(samples)
        except ValueError as exc:
            raise InvalidDeployment(f"sample_inputs is not valid JSON: {exc}.") from exc
    return deployment.ModelSchema(task=str(task), inputs=inputs, outputs=str(outputs),
                                  description=str(params.get("description") or ""), sample_inputs=samples or None)


@deploy_endpoint("GET")
def model_detail(request: HttpRequest, deployer: Deployer, name: str) -> HttpResponse:
    return JsonResponse(describe(deployment.get_model(name)))


@deploy_endpoint("POST")
def register_version(request: HttpRequest, deployer: Deployer, name: str) -> HttpResponse:
    artifact = request.FILES.get("artifact")
    if artifact is None:
        raise InvalidDeployment("Send the model file as the multipart field 'artifact'.")
    params = _params(request)
    framework = params.get("framework") or ""
    schema = _schema(params)
    created = not MLModel.objects.filter(name=name).exists()
    version = deployment.register(
        name, artifact, framework, activate=_flag(params.get("activate")), schema=schema,
        classes=_names(params.get("classes"), "classes"), filename=artifact.name or "", **_audit(request, deployer),
    )
    return JsonResponse({"model": name, "created_model": created, "version": describe_version(version)},
                        status=201)


@deploy_endpoint("POST")
def activate_version(request: HttpRequest, deployer: Deployer, name: str, number: int) -> HttpResponse:
    previous = deployment.get_model(name).active_version
    version = deployment.activate(name, number, **_audit(request, deployer))
    return JsonResponse({"model": name, "version": describe_version(version),
                         "previous_version": previous.version if previous else None})


@deploy_endpoint("POST")
def rollback(request: HttpRequest, deployer: Deployer, name: str) -> HttpResponse:
    previous = deployment.get_model(name).active_version
    version = deployment.rollback(name, **_audit(request, deployer))
    return JsonResponse({"model": name, "version": describe_version(version),
                         "previous_version": previous.version if previous else None})


@deploy_endpoint("POST")
def retire_version(request: HttpRequest, deployer: Deployer, name: str, number: int) -> HttpResponse:
    replacement = _number(_params(request).get("replacement"), "replacement")
    version = deployment.retire(name, number, replacement=replacement, **_audit(request, deployer))
    active = version.model.active_version
    return JsonResponse({"model": name, "version": describe_version(version),
                         "active_version": active.version if active else None})


#: How many of a model's latest audit events ``GET /api/v1/models/<name>`` lists.
EVENTS_LISTED = 50


def describe_version(version: ModelVersion) -> dict[str, Any]:
    return {
        "version": version.version,
        "status": version.status,
        "active": version.is_active,
        "framework": version.framework,
        "checksum": version.checksum,
        "size_bytes": version.size_bytes,
        "classes": version.metadata.get("classes"),
        "failure_reason": version.failure_reason,
        "created_by": version.created_by,
        "created_at": version.created_at.isoformat() if version.created_at else None,
    }


def describe(model: MLModel) -> dict[str, Any]:
    """The model, its versions and its latest audit events, as the API returns them."""
    versions = list(model.versions.order_by("-version"))
    events = model.deployment_events.order_by("-at", "-id")[:EVENTS_LISTED]
    return {
        "name": model.name,
        "task": model.task,
        "inputs": list(model.inputs),
        "outputs": model.outputs,
        "active_version": next((v.version for v in versions if v.is_active), None),
        "versions": [describe_version(v) for v in versions],
        "events": [
            {"at": e.at.isoformat(), "version": e.version_number, "action": e.action, "actor": e.actor,
             "source": e.source, "address": e.address, "detail": e.detail}
            for e in events
        ],
    }


__all__ = [
    "ArtifactUploadHandler", "Deployer", "activate_version", "client_address", "deploy_endpoint", "describe",
    "model_detail", "register_version", "retire_version", "rollback",
]
