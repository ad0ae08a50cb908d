"""The model registry: which models exist, their versions and which one serves."""

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
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

    @property
    def active_version(self):
        return self.versions.filter(is_active=True).first()


class ModelVersion(models.Model):
    class Framework(models.TextChoices):
        SKLEARN = "sklearn", "scikit-learn (skops)"
        KERAS = "keras", "Keras (.keras)"

    class Status(models.TextChoices):
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"
        RETIRED = "retired", "Retired"

    model = models.ForeignKey(MLModel, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    framework = models.CharField(max_length=16, choices=Framework.choices)
    artifact = models.CharField(max_length=255, help_text="Path relative to the model store.")
    checksum = models.CharField(max_length=64, help_text="SHA-256 of the artifact file.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.READY)
    is_active = models.BooleanField(default=False)
    metadata = models.JSONField(default=dict, blank=True, help_text="Class labels and training facts.")
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
        """Make this the version that serves requests which name no version."""
        with transaction.atomic():
            ModelVersion.objects.filter(model=self.model, is_active=True).exclude(pk=self.pk).update(
                is_active=False
            )
            self.is_active = True
            self.save(update_fields=["is_active"])
