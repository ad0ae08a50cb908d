from django.contrib import admin, messages

from .models import MLModel, ModelVersion


class ModelVersionInline(admin.TabularInline):
    model = ModelVersion
    extra = 0
    fields = ["version", "framework", "artifact", "status", "is_active", "created_at"]
    readonly_fields = ["version", "framework", "artifact", "created_at", "is_active"]
    show_change_link = True
    can_delete = False


@admin.register(MLModel)
class MLModelAdmin(admin.ModelAdmin):
    list_display = ["name", "task", "feature_count", "active_version_number", "created_at"]
    list_filter = ["task"]
    search_fields = ["name", "description"]
    inlines = [ModelVersionInline]

    @admin.display(description="features")
    def feature_count(self, obj):
        return len(obj.inputs or [])

    @admin.display(description="active version")
    def active_version_number(self, obj):
        active = obj.active_version
        return active.version if active else "—"


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["__str__", "framework", "status", "is_active", "checksum_short", "created_at"]
    list_filter = ["framework", "status", "is_active", "model"]
    search_fields = ["model__name", "artifact", "checksum"]
    readonly_fields = ["model", "version", "framework", "artifact", "checksum", "is_active", "created_at"]
    actions = ["make_active"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("model")

    @admin.display(description="checksum")
    def checksum_short(self, obj):
        return obj.checksum[:12]

    @admin.action(description="Make the selected version active (restart servers to apply)")
    def make_active(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one version to activate.", messages.ERROR)
            return
        version = queryset.get()
        version.activate()
        self.message_user(request, f"{version} is now active; servers pick it up when they restart.")
