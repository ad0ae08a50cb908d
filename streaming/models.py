"""API keys that prediction clients authenticate with."""

import hashlib
import secrets

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

KEY_PREFIX = "pk_"


def hash_key(raw_key: str) -> str:
    # Keys are 256 random bits, so a fast hash is enough: there is nothing to
    # brute-force that a slow password hash would protect.
    return hashlib.sha256(raw_key.encode()).hexdigest()


class APIKeyQuerySet(models.QuerySet):
    def active(self):
        return self.filter(revoked_at__isnull=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=timezone.now())
        )


class APIKey(models.Model):
    name = models.CharField(max_length=100, unique=True, help_text="Who uses this key; shown in the prediction log.")
    prefix = models.CharField(max_length=16, editable=False, help_text="First characters of the key, to recognise it.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    allowed_models = models.ManyToManyField(
        "inference.MLModel", blank=True, related_name="api_keys",
        help_text="Models this key may use; none selected means every model.",
    )
    rate_limit_per_s = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(0.001)],
        help_text="Most requests per second (per server process); empty for no limit.",
    )
    can_deploy = models.BooleanField(
        default=False,
        help_text="May register, activate, roll back and retire model versions through the deployment API. "
                  "A key for predictions should not.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, editable=False
    )
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty for a key that does not expire.")
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = APIKeyQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        verbose_name = "API key"

    def __str__(self):
        return self.name

    @property
    def is_active(self):
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > timezone.now())

    def set_new_key(self) -> str:
        """Give this record a fresh secret and return it; only its hash is kept."""
        raw = KEY_PREFIX + secrets.token_urlsafe(32)
        self.prefix = raw[: len(KEY_PREFIX) + 6]
        self.key_hash = hash_key(raw)
        return raw

    def revoke(self):
        self.revoked_at = timezone.now()
        self.save(update_fields=["revoked_at"])
