"""The rollout panel of a model's admin page: set or change its shadow and canary, promote, abort.

A mixin of ``inference.admin.MLModelAdmin``: its views post to
``inference.rollout.changes`` through the model admin's ``_deploy`` (the
permission to change model versions, the staff user as actor, source
``admin``, the outcome as a message). The rollout's fields are not part of
the model's form: they change only here, audited. ``monitoring`` adds the
comparisons to the page (``comparisons`` in the context).
"""

from django import forms
from django.contrib import messages
from django.shortcuts import redirect
from django.urls import path, reverse
from django.utils.decorators import method_decorator
from django.views.decorators.http import require_POST

from . import changes

#: The model's fields that only the rollout panel changes.
ROLLOUT_FIELDS = ("shadow_version", "shadow_sample_pct", "canary_version", "canary_weight_pct",
                  "canary_max_error_pct", "canary_max_p99_ms")
_PERCENT = {"min_value": 0, "max_value": 100}


class ShadowForm(forms.Form):
    version = forms.TypedChoiceField(coerce=int, label="Shadow version")
    sample_pct = forms.FloatField(initial=100, label="Sample (%)", **_PERCENT,
                                  help_text="Share of the active version's requests copied to the shadow.")


class CanaryForm(forms.Form):
    version = forms.TypedChoiceField(coerce=int, label="Canary version")
    weight_pct = forms.FloatField(label="Weight (%)", **_PERCENT,
                                  help_text="Share of the requests naming no version that the canary answers.")
    max_error_pct = forms.FloatField(required=False, label="Abort past errors (%)", **_PERCENT)
    max_p99_ms = forms.FloatField(required=False, min_value=0.001, label="Abort past p99 (ms)")


def _choices(model):
    return [(v.version, f"v{v.version}") for v in model.versions.filter(status="staged").order_by("-version")]


class RolloutAdminMixin:
    """Adds the rollout's views and panel to the model admin."""

    def rollout_urls(self):
        name = f"{self.opts.app_label}_{self.opts.model_name}"
        view = self.admin_site.admin_view
        return [
            path("<path:object_id>/rollout/shadow/", view(self.shadow_view), name=f"{name}_rollout_shadow"),
            path("<path:object_id>/rollout/canary/", view(self.canary_view), name=f"{name}_rollout_canary"),
            path("<path:object_id>/rollout/promote/", view(self.promote_view), name=f"{name}_rollout_promote"),
            path("<path:object_id>/rollout/abort/", view(self.abort_view), name=f"{name}_rollout_abort"),
        ]

    def rollout_panel(self, request, obj):
        name = f"admin:{self.opts.app_label}_{self.opts.model_name}_rollout"
        shadow, canary = ShadowForm(prefix="shadow"), CanaryForm(prefix="canary", initial={
            "max_error_pct": obj.canary_max_error_pct, "max_p99_ms": obj.canary_max_p99_ms,
            "weight_pct": obj.canary_weight_pct or None, "version": obj.canary_version})
        shadow.fields["version"].choices = canary.fields["version"].choices = _choices(obj)
        shadow.initial.update(version=obj.shadow_version, sample_pct=obj.shadow_sample_pct)
        return {
            "model": obj,
            "shadow_form": shadow,
            "canary_form": canary,
            "urls": {action: reverse(f"{name}_{action}", args=[obj.pk])
                     for action in ("shadow", "canary", "promote", "abort")},
        }

    def _posted(self, request, form_class, prefix, obj_id):
        obj = self.get_object(request, obj_id)
        form = form_class(request.POST, prefix=prefix)
        if obj is not None:
            form.fields["version"].choices = _choices(obj)
        return form

    def _refused(self, request, object_id, form):
        problems = "; ".join(f"{field}: {' '.join(errors)}" for field, errors in form.errors.items())
        self.message_user(request, f"Nothing changed: {problems}", messages.ERROR)
        return redirect(reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[object_id]))

    @method_decorator(require_POST)
    def shadow_view(self, request, object_id):
        form = self._posted(request, ShadowForm, "shadow", object_id)
        if "remove" not in request.POST and not form.is_valid():
            return self._refused(request, object_id, form)

        def change(model, who):
            if "remove" in request.POST:
                changes.set_shadow(model, None, **who)
                return f"{model.name} has no shadow any more."
            data = form.cleaned_data
            changes.set_shadow(model, data["version"], sample_pct=data["sample_pct"], **who)
            return f"v{data['version']} is the shadow of {model.name}, copied {data['sample_pct']:g}% of requests."

        return self._deploy(request, object_id, change)

    @method_decorator(require_POST)
    def canary_view(self, request, object_id):
        form = self._posted(request, CanaryForm, "canary", object_id)
        if "remove" not in request.POST and not form.is_valid():
            return self._refused(request, object_id, form)

        def change(model, who):
            if "remove" in request.POST:
                changes.set_canary(model, None, **who)
                return f"{model.name} has no canary any more."
            data = form.cleaned_data
            changes.set_canary(model, data["version"], weight_pct=data["weight_pct"],
                               max_error_pct=data["max_error_pct"], max_p99_ms=data["max_p99_ms"], **who)
            return f"v{data['version']} is the canary of {model.name}, answering {data['weight_pct']:g}% of requests."

        return self._deploy(request, object_id, change)

    @method_decorator(require_POST)
    def promote_view(self, request, object_id):
        def change(model, who):
            version = changes.promote(model, **who)
            return f"{version} is now active; the rollout is over."

        return self._deploy(request, object_id, change)

    @method_decorator(require_POST)
    def abort_view(self, request, object_id):
        def change(model, who):
            changes.abort(model, **who)
            return f"The rollout of {model.name} is aborted: v{model.active_version.version} serves everything."

        return self._deploy(request, object_id, change)
