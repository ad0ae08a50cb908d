from django.contrib import admin, messages
from django.utils import timezone

from .models import APIKey


@admin.register(APIKey)
class APIKeyAdmin(admin.ModelAdmin):
    list_display = [
        "name", "prefix", "model_scope", "can_deploy", "rate_limit_per_s", "created_at", "last_used_at", "status",
    ]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter), "can_deploy"]
    search_fields = ["name", "prefix"]
    readonly_fields = ["prefix", "created_at", "created_by", "last_used_at", "revoked_at"]
    filter_horizontal = ["allowed_models"]
    actions = ["revoke"]

    @admin.display(description="models")
    def model_scope(self, obj):
        names = [m.name for m in obj.allowed_models.all()]
        return ", ".join(names) if names else "all"

    @admin.display(description="status")
    def status(self, obj):
        return "active" if obj.is_active else f"revoked {obj.revoked_at:%Y-%m-%d %H:%M}"

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("allowed_models")

    def save_model(self, request, obj, form, change):
        if not change:
            raw = obj.set_new_key()
            obj.created_by = request.user
            super().save_model(request, obj, form, change)
            self.message_user(
                request,
                f"The new key for {obj.name} is {raw} — copy it now, it is stored hashed and not shown again.",
                messages.WARNING,
            )
        else:
            super().save_model(request, obj, form, change)

    @admin.action(description="Revoke selected keys")
    def revoke(self, request, queryset):
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"Revoked {count} key(s). Connections using them are refused from now on.")

    def has_delete_permission(self, request, obj=None):
        # Revoke instead: the prediction log refers to keys by name.
        return False
