"""What the shadow showed, beside the prediction log: per-minute comparisons, and a sample of disagreements."""

from django.db import models

from ..predictionlog.columns import MODEL_NAME_LENGTH


class ShadowComparison(models.Model):
    """One minute of one model's shadow: how its answers compared with those the clients were sent."""

    minute = models.DateTimeField(help_text="The minute (UTC) the answers were ready in.")
    model = models.CharField(max_length=MODEL_NAME_LENGTH)
    primary_version = models.IntegerField(help_text="The version that answered the clients.")
    shadow_version = models.IntegerField()
    requests = models.PositiveIntegerField(default=0, help_text="Requests compared.")
    rows = models.PositiveIntegerField(default=0, help_text="Input rows compared.")
    agreed_rows = models.PositiveIntegerField(
        default=0, help_text="Rows on which both versions agree: the same label, or values within 1e-6.",
    )
    sum_abs_diff = models.FloatField(
        default=0.0, help_text="Sum over rows of the largest absolute difference between the two outputs.",
    )
    max_abs_diff = models.FloatField(default=0.0)
    primary_ms_sum = models.FloatField(default=0.0, help_text="The answering version's time in its batcher.")
    primary_ms_max = models.FloatField(default=0.0)
    shadow_ms_sum = models.FloatField(default=0.0, help_text="The shadow's time in its batcher.")
    shadow_ms_max = models.FloatField(default=0.0)
    failed = models.PositiveIntegerField(default=0, help_text="Copies the shadow failed on (an error, a timeout).")
    dropped = models.PositiveIntegerField(default=0, help_text="Copies not run, to spare the serving version.")

    class Meta:
        verbose_name = "shadow comparison"
        ordering = ["-minute", "model", "-shadow_version"]
        default_permissions = ["view"]
        constraints = [
            models.UniqueConstraint(fields=["minute", "model", "primary_version", "shadow_version"],
                                    name="one_comparison_per_minute_and_pair"),
        ]
        indexes = [models.Index(fields=["model", "minute"], name="comparison_model_minute")]

    def __str__(self):
        return f"{self.model} v{self.primary_version} vs v{self.shadow_version} at {self.minute:%Y-%m-%d %H:%M}"

    @property
    def agreement(self):
        return self.agreed_rows / self.rows if self.rows else None

    @property
    def mean_abs_diff(self):
        return self.sum_abs_diff / self.rows if self.rows else None

    @property
    def primary_ms_mean(self):
        return self.primary_ms_sum / self.requests if self.requests else None

    @property
    def shadow_ms_mean(self):
        return self.shadow_ms_sum / self.requests if self.requests else None


class ShadowDisagreement(models.Model):
    """One input row on which the shadow disagreed with the answer the client got: a bounded sample."""

    at = models.DateTimeField(db_index=True, help_text="When the client's answer was ready.")
    model = models.CharField(max_length=MODEL_NAME_LENGTH)
    primary_version = models.IntegerField()
    shadow_version = models.IntegerField()
    inputs = models.JSONField()
    primary_output = models.JSONField(help_text="What the client was sent for this row.")
    shadow_output = models.JSONField()
    abs_diff = models.FloatField(help_text="The largest absolute difference between the two outputs.")

    class Meta:
        verbose_name = "shadow disagreement"
        ordering = ["-at", "-id"]
        default_permissions = ["view"]
        indexes = [models.Index(fields=["model", "at"], name="disagreement_model_at")]

    def __str__(self):
        return f"{self.model} v{self.primary_version} vs v{self.shadow_version} at {self.at:%Y-%m-%d %H:%M:%S}"
