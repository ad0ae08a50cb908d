"""The model registry in the admin: models, their versions, deployment buttons and the deployment audit.

Every change to what serves (upload, activate, roll back, retire) goes
through ``inference.deployment``, with the staff user as actor, source
``admin`` and the request's client address. Versions are never edited by
hand: their status changes only through those buttons.
"""

from dataclasses import dataclass

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404
from django.shortcuts import redirect
from django.urls import path, reverse
from django.utils.decorators import method_decorator
from django.views.decorators.http import require_POST

from . import deployment
from .deployment import DEPLOY_PERMISSION
from .exceptions import InferenceError
from .models import DeploymentEvent, MLModel, ModelVersion
from .rollout.admin import ROLLOUT_FIELDS, RolloutAdminMixin
from .uploads import max_artifact_bytes


def client_address(request):
    # REMOTE_ADDR, not X-Forwarded-For: a client can write any header it likes.
    return request.META.get("REMOTE_ADDR") or ""


def _labels(raw):
    return [label.strip() for label in raw.split(",") if label.strip()] or None


class VersionUploadForm(forms.Form):
    artifact = forms.FileField(help_text="A skops archive (scikit-learn) or a .keras file.")
    framework = forms.ChoiceField(choices=ModelVersion.Framework.choices)
    classes = forms.CharField(
        required=False,
        help_text="Class labels, comma-separated, one per probability column (a Keras classifier needs them; "
                  "a later Keras version reuses its predecessor's).",
    )
    activate = forms.BooleanField(required=False, help_text="Serve it as soon as it has passed validation.")


class MLModelCreationForm(forms.ModelForm):
    """The add page: a model's schema, and optionally its first version's artifact."""

    artifact = forms.FileField(required=False, help_text="Optional: the first version, validated on save.")
    framework = forms.ChoiceField(choices=[("", "—")] + list(ModelVersion.Framework.choices), required=False)
    classes = forms.CharField(required=False, help_text=VersionUploadForm.base_fields["classes"].help_text)
    activate = forms.BooleanField(required=False, initial=True, help_text="Serve the first version once valid.")

    class Meta:
        model = MLModel
        fields = "__all__"

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("artifact") and not cleaned.get("framework"):
            self.add_error("framework", "Choose the framework the artifact was saved with.")
        return cleaned


class ModelVersionInline(admin.TabularInline):
    model = ModelVersion
    extra = 0
    fields = ["version", "framework", "artifact", "status", "is_active", "failure_reason", "created_at"]
    readonly_fields = ["version", "framework", "artifact", "status", "is_active", "failure_reason", "created_at"]
    show_change_link = True
    can_delete = False

    def has_add_permission(self, request, obj=None):
        # Versions arrive through the upload form, which validates them.
        return False


class DeploymentEventInline(admin.TabularInline):
    model = DeploymentEvent
    verbose_name_plural = "deployment events"
    extra = 0
    fields = ["at", "version_number", "action", "actor", "source", "address", "detail"]
    readonly_fields = fields
    ordering = ["-at", "-id"]
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@dataclass(frozen=True)
class VersionButtons:
    """One row of the deployment panel: a version and the changes it allows."""

    version: ModelVersion
    activate_url: str
    retire_url: str
    #: Versions that may replace it when it is the active one and is retired.
    replacements: list


@admin.register(MLModel)
class MLModelAdmin(RolloutAdminMixin, admin.ModelAdmin):
    list_display = ["name", "task", "feature_count", "active_version_number", "created_at"]
    exclude = ROLLOUT_FIELDS
    list_filter = ["task"]
    search_fields = ["name", "description"]
    inlines = [ModelVersionInline]
    change_form_template = "admin/inference/mlmodel/change_form.html"

    @admin.display(description="features")
    def feature_count(self, obj):
        return len(obj.inputs or [])

    @admin.display(description="active version")
    def active_version_number(self, obj):
        active = obj.active_version
        return active.version if active else "—"

    def get_inlines(self, request, obj):
        # Added here rather than in ``inlines`` so that subclasses replacing the version inline keep the audit.
        return [*self.inlines, DeploymentEventInline] if obj is not None else []

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None and obj.versions.exists():
            # Every version was validated against these: register a new model to change them.
            fields += ["task", "inputs"]
        return fields

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = MLModelCreationForm
        return super().get_form(request, obj, **kwargs)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        artifact = None if change else form.cleaned_data.get("artifact")
        if not artifact:
            return
        if not request.user.has_perm(DEPLOY_PERMISSION):
            self.message_user(request, "The artifact was not registered: that needs the permission to change "
                              "model versions.", messages.ERROR)
            return
        # After the admin's transaction commits: validating loads the model, which must not hold it open.
        transaction.on_commit(lambda: self._register(
            request, str(obj.pk), artifact, form.cleaned_data["framework"], form.cleaned_data.get("classes") or "",
            activate=form.cleaned_data.get("activate", False),
        ))

    # -- deployment buttons ---------------------------------------------------------------------

    def get_urls(self):
        name = f"{self.opts.app_label}_{self.opts.model_name}"
        view = self.admin_site.admin_view
        return [
            path("<path:object_id>/deploy/upload/", view(self.upload_view), name=f"{name}_upload"),
            path("<path:object_id>/deploy/<int:number>/activate/", view(self.activate_view), name=f"{name}_activate"),
            path("<path:object_id>/deploy/<int:number>/retire/", view(self.retire_view), name=f"{name}_retire"),
            path("<path:object_id>/deploy/rollback/", view(self.rollback_view), name=f"{name}_rollback"),
            *self.rollout_urls(),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        obj = self.get_object(request, object_id)
        if obj is not None:
            extra_context = {**(extra_context or {}), "deployment": self._panel(request, obj),
                             "rollout": self.rollout_panel(request, obj)}
        return super().change_view(request, object_id, form_url, extra_context)

    def _panel(self, request, obj):
        name = f"admin:{self.opts.app_label}_{self.opts.model_name}"
        versions = list(obj.versions.order_by("-version"))
        staged = [v for v in versions if v.status == ModelVersion.Status.STAGED]
        return {
            "may_deploy": request.user.has_perm(DEPLOY_PERMISSION),
            "rows": [
                VersionButtons(
                    version=v,
                    activate_url=reverse(f"{name}_activate", args=[obj.pk, v.version]),
                    retire_url=reverse(f"{name}_retire", args=[obj.pk, v.version]),
                    replacements=staged if v.is_active else [],
                )
                for v in versions
            ],
            "rollback_target": deployment.rollback_target(obj),
            "rollback_url": reverse(f"{name}_rollback", args=[obj.pk]),
            "upload_url": reverse(f"{name}_upload", args=[obj.pk]),
            "upload_form": VersionUploadForm(),
            "max_artifact_mib": max_artifact_bytes() / (1024 * 1024),
        }

    def _deploy(self, request, object_id, change):
        """Run one deployment change for the model ``object_id`` and report it; back to the model's page."""
        obj = self.get_object(request, object_id)
        if obj is None:
            raise Http404(f"There is no model with id {object_id!r}.")
        if not request.user.has_perm(DEPLOY_PERMISSION):
            raise PermissionDenied("Changing what a model serves needs the permission to change model versions.")
        who = {"actor": request.user.get_username(), "source": "admin", "address": client_address(request)}
        try:
            self.message_user(request, change(obj, who), messages.SUCCESS)
        except InferenceError as exc:
            self.message_user(request, str(exc), messages.ERROR)
        return redirect(reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[obj.pk]))

    def _register(self, request, object_id, artifact, framework, classes, *, activate):
        def change(model, who):
            version = deployment.register(model, artifact, framework, activate=activate, classes=_labels(classes),
                                          filename=artifact.name or "", **who)
            state = "and activated" if version.is_active else "as staged"
            return f"{version} passed validation and is registered {state}."

        artifact.seek(0)
        return self._deploy(request, object_id, change)

    @method_decorator(require_POST)
    def upload_view(self, request, object_id):
        form = VersionUploadForm(request.POST, request.FILES)
        if not form.is_valid():
            problems = "; ".join(f"{field}: {' '.join(errors)}" for field, errors in form.errors.items())
            self.message_user(request, f"The upload was not registered: {problems}", messages.ERROR)
            return redirect(reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[object_id]))
        data = form.cleaned_data
        return self._register(request, object_id, data["artifact"], data["framework"], data["classes"],
                              activate=data["activate"])

    @method_decorator(require_POST)
    def activate_view(self, request, object_id, number):
        def change(model, who):
            previous = model.active_version
            version = deployment.activate(model, number, **who)
            return f"{version} is now active" + (f" (was v{previous.version})." if previous else ".")

        return self._deploy(request, object_id, change)

    @method_decorator(require_POST)
    def rollback_view(self, request, object_id):
        def change(model, who):
            previous = model.active_version
            version = deployment.rollback(model, **who)
            return f"Rolled back {model.name} to v{version.version}" + (
                f" (was v{previous.version})." if previous else "."
            )

        return self._deploy(request, object_id, change)

    @method_decorator(require_POST)
    def retire_view(self, request, object_id, number):
        raw = request.POST.get("replacement") or ""
        replacement = int(raw) if raw.isdigit() else None

        def change(model, who):
            version = deployment.retire(model, number, replacement=replacement, **who)
            active = model.active_version
            return f"{version} is retired; " + (f"v{active.version} serves." if active else "no version is active.")

        return self._deploy(request, object_id, change)


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["__str__", "framework", "status", "is_active", "checksum_short", "created_by", "created_at"]
    list_filter = ["framework", "status", "is_active", "model"]
    search_fields = ["model__name", "artifact", "checksum"]
    readonly_fields = [
        "model", "version", "framework", "artifact", "checksum", "size_bytes", "status", "is_active",
        "failure_reason", "metadata", "created_by", "created_at",
    ]
    actions = ["make_active"]
    change_form_template = "admin/inference/modelversion/change_form.html"

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("model")

    def has_add_permission(self, request):
        # Versions are registered by uploading on their model's page, which validates them.
        return False

    @admin.display(description="checksum")
    def checksum_short(self, obj):
        return obj.checksum[:12]

    @admin.action(description="Make the selected version active", permissions=["change"])
    def make_active(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one version to activate.", messages.ERROR)
            return
        version = queryset.get()
        try:
            deployment.activate(version.model, version, actor=request.user.get_username(), source="admin",
                                address=client_address(request))
        except InferenceError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        self.message_user(request, f"{version} is now active.")


@admin.register(DeploymentEvent)
class DeploymentEventAdmin(admin.ModelAdmin):
    """The deployment audit: read-only for everyone."""

    list_display = ["at", "model", "version_number", "action", "actor", "source", "address", "detail"]
    list_filter = ["action", "source", "model"]
    search_fields = ["model__name", "actor", "address", "detail"]
    date_hierarchy = "at"

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("model")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
