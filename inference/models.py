"""The model registry: which models exist, their versions and which one serves."""

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models, transaction
from django.db.models import Q


class MLModel(models.Model):
    class Task(models.TextChoices):
        CLASSIFICATION = "classification", "Classification"
        REGRESSION = "regression", "Regression"
        OTHER = "other", "Other"

    name = models.CharField(
        max_length=64,
        unique=True,
        validators=[RegexValidator(r"^[a-z0-9][a-z0-9_.-]*$", "Use lower-case letters, digits, '.', '_' and '-'.")],
        help_text="Used in request frames and in the WebSocket URL.",
    )
    task = models.CharField(max_length=16, choices=Task.choices)
    description = models.TextField(blank=True)
    inputs = models.JSONField(help_text="Feature names, in the order the model expects them.")
    outputs = models.CharField(max_length=255, help_text="What each output row holds.")
    sample_inputs = models.JSONField(
        null=True, blank=True,
        help_text="A few typical input rows (lists of numbers in the order of the inputs); new versions must "
                  "give finite outputs for them. Empty: rows of zeros.",
    )
    max_batch_size = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="Most rows in one model call; empty for the platform default.",
    )
    max_delay_ms = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(0)],
        help_text="Longest wait for more rows before a batch runs; empty for the platform default.",
    )
    queue_capacity = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="Most requests waiting for this model; empty for the platform default.",
    )
    # The progressive rollout (inference.rollout): changed through inference.rollout.changes, which audits it.
    shadow_version = models.PositiveIntegerField(
        null=True, blank=True, help_text="A version that runs on a copy of requests; its answers are never sent.",
    )
    shadow_sample_pct = models.FloatField(
        default=100.0, validators=[MinValueValidator(0), MaxValueValidator(100)],
        help_text="Percentage of the active version's requests copied to the shadow.",
    )
    canary_version = models.PositiveIntegerField(
        null=True, blank=True, help_text="A version that answers a share of the requests naming no version.",
    )
    canary_weight_pct = models.FloatField(
        default=0.0, validators=[MinValueValidator(0), MaxValueValidator(100)],
        help_text="Percentage of the requests naming no version that the canary answers.",
    )
    canary_max_error_pct = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(0), MaxValueValidator(100)],
        help_text="Abort the canary when more than this percentage of its requests end in a server error; "
                  "empty: never.",
    )
    canary_max_p99_ms = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(0)],
        help_text="Abort the canary when its 99th percentile latency passes this many milliseconds; empty: never.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "model"

    def __str__(self):
        return self.name

    def clean(self):
        if not isinstance(self.inputs, list) or not self.inputs or not all(
            isinstance(name, str) and name for name in self.inputs
        ):
            raise ValidationError({"inputs": "Inputs must be a non-empty list of feature names."})
        if len(set(self.inputs)) != len(self.inputs):
            raise ValidationError({"inputs": "Feature names must be unique."})
        if self.sample_inputs is not None and not (
            isinstance(self.sample_inputs, list) and self.sample_inputs and all(
                isinstance(row, list) and len(row) == len(self.inputs)
                and all(type(value) in (int, float) for value in row)
                for row in self.sample_inputs
            )
        ):
            raise ValidationError({"sample_inputs": (
                f"Sample inputs must be a non-empty list of rows, each a list of {len(self.inputs)} numbers "
                "in the order of the inputs."
            )})

    @property
    def active_version(self):
        return self.versions.filter(is_active=True).first()


class ModelVersion(models.Model):
    class Framework(models.TextChoices):
        SKLEARN = "sklearn", "scikit-learn (skops)"
        KERAS = "keras", "Keras (.keras)"

    class Status(models.TextChoices):
        #: Validated and loadable, not serving (new, or replaced by a later activation).
        STAGED = "staged", "Staged"
        #: The one version of its model that serves requests naming no version.
        ACTIVE = "active", "Active"
        #: Taken out of service for good: unloaded, answers ``unknown_model``.
        RETIRED = "retired", "Retired"
        #: Failed validation (``failure_reason`` says why); never served.
        FAILED = "failed", "Failed"

    model = models.ForeignKey(MLModel, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    framework = models.CharField(max_length=16, choices=Framework.choices)
    artifact = models.CharField(max_length=255, help_text="Path relative to the model store.")
    checksum = models.CharField(max_length=64, help_text="SHA-256 of the artifact file.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.STAGED)
    is_active = models.BooleanField(default=False)
    metadata = models.JSONField(default=dict, blank=True, help_text="Class labels and training facts.")
    size_bytes = models.PositiveBigIntegerField(null=True, blank=True, help_text="Size of the artifact file.")
    failure_reason = models.TextField(blank=True, help_text="Why validation refused this version.")
    created_by = models.CharField(max_length=150, blank=True, help_text="Who registered it (user or API key).")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model__name", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["model", "version"], name="unique_model_version"),
            models.UniqueConstraint(
                fields=["model"], condition=Q(is_active=True), name="one_active_version_per_model"
            ),
        ]

    def __str__(self):
        return f"{self.model.name} v{self.version}"

    def activate(self):
        """Make this the version that serves requests which name no version; the one it replaces is staged."""
        with transaction.atomic():
            ModelVersion.objects.filter(model=self.model, is_active=True).exclude(pk=self.pk).update(
                is_active=False, status=ModelVersion.Status.STAGED
            )
            self.is_active = True
            self.status = ModelVersion.Status.ACTIVE
            self.save(update_fields=["is_active", "status"])


class DeploymentEvent(models.Model):
    """One change to what a model serves, for the audit: who did what, when, from where."""

    class Action(models.TextChoices):
        REGISTERED = "registered", "Registered"
        FAILED = "failed", "Failed validation"
        ACTIVATED = "activated", "Activated"
        ROLLED_BACK = "rolled_back", "Rolled back"
        RETIRED = "retired", "Retired"
        SHADOW_SET = "shadow_set", "Shadow set"
        CANARY_SET = "canary_set", "Canary set"
        PROMOTED = "promoted", "Promoted"
        ABORTED = "aborted", "Rollout aborted"

    model = models.ForeignKey(MLModel, on_delete=models.CASCADE, related_name="deployment_events")
    version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="deployment_events")
    version_number = models.PositiveIntegerField(null=True, blank=True)
    action = models.CharField(max_length=16, choices=Action.choices)
    actor = models.CharField(max_length=150, help_text="The user, API key or command that made the change.")
    source = models.CharField(max_length=32, help_text="admin, command, api, or guard (an automatic canary abort).")
    address = models.CharField(max_length=64, blank=True, help_text="The client address, for the admin and the API.")
    detail = models.TextField(blank=True)
    at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name = "deployment event"

    def __str__(self):
        return f"{self.model.name} v{self.version_number or '?'} {self.action} by {self.actor}"
