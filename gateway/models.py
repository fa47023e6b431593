"""Gateway state: issued keys, providers, the model catalogue and its deployments."""

from __future__ import annotations

import os
from decimal import Decimal

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from gateway import crypto
from gateway import keys as keygen


class ProviderKind(models.TextChoices):
    OPENAI = "openai", "OpenAI"
    AZURE_OPENAI = "azure_openai", "Azure OpenAI"
    OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible (vLLM, Ollama, TGI, LM Studio)"
    ANTHROPIC = "anthropic", "Anthropic Messages (direct, or Claude on Amazon Bedrock)"
    GEMINI = "gemini", "Google Gemini (Generative Language API or Vertex AI)"
    BEDROCK = "bedrock", "Amazon Bedrock Converse"


class Provider(models.Model):
    """An upstream account: where to send requests and with which credential."""

    name = models.SlugField(max_length=64, unique=True)
    kind = models.CharField(max_length=32, choices=ProviderKind.choices)
    base_url = models.URLField(
        max_length=500, help_text="e.g. https://api.openai.com/v1 or https://x.openai.azure.com"
    )
    api_key_encrypted = models.TextField(
        blank=True, editable=False, help_text="Fernet token; never plaintext"
    )
    api_key_env = models.CharField(
        max_length=128, blank=True, help_text="Name of an environment variable holding the credential instead"
    )
    api_version = models.CharField(max_length=32, blank=True, help_text="Azure OpenAI api-version")
    region = models.CharField(max_length=64, blank=True)
    enabled = models.BooleanField(default=True)
    timeout_seconds = models.FloatField(default=600.0, help_text="Total time one upstream call may take")
    connect_timeout_seconds = models.FloatField(default=10.0)
    extra_headers = models.JSONField(
        default=dict, blank=True, help_text="Headers added to every upstream call"
    )
    flags = models.JSONField(
        default=list,
        blank=True,
        help_text='Data-handling properties, e.g. ["eu_only", "zero_data_retention"]',
    )
    options = models.JSONField(
        default=dict, blank=True,
        help_text='Vendor settings: bedrock {"access_key_id", "anthropic": true}; gemini {"vertex": true, "project", "location"}',
    )  # fmt: skip
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        """Refuse a base URL the gateway must not call (SSRF): see gateway/ssrf.py."""
        super().clean()
        from gateway.ssrf import upstream_problem

        problem = upstream_problem(self.base_url) if self.base_url else None
        if problem is not None:
            raise ValidationError({"base_url": f"This URL {problem}."})

    def set_api_key(self, plaintext: str) -> None:
        """Store ``plaintext`` encrypted (an empty string clears it)."""
        self.api_key_encrypted = crypto.encrypt(plaintext) if plaintext else ""

    def credential(self) -> str:
        """The plaintext credential, for the request about to be sent. Never log it."""
        if self.api_key_env:
            return os.environ.get(self.api_key_env, "")
        return crypto.decrypt(self.api_key_encrypted) if self.api_key_encrypted else ""


class CatalogModelKind(models.TextChoices):
    CHAT = "chat", "Chat / completions / responses"
    EMBEDDING = "embedding", "Embeddings"
    IMAGE = "image", "Image generation"
    AUDIO = "audio", "Speech to text"
    MODERATION = "moderation", "Moderation"


class CatalogModel(models.Model):
    """A public model name clients ask for, with its prices and limits."""

    name = models.CharField(max_length=128, unique=True)
    kind = models.CharField(max_length=16, choices=CatalogModelKind.choices, default=CatalogModelKind.CHAT)
    description = models.TextField(blank=True)
    enabled = models.BooleanField(default=True)
    input_per_mtok = models.DecimalField(
        "USD per 1M input tokens", max_digits=12, decimal_places=6, default=Decimal(0)
    )
    output_per_mtok = models.DecimalField(
        "USD per 1M output tokens", max_digits=12, decimal_places=6, default=Decimal(0)
    )
    cached_input_per_mtok = models.DecimalField(
        "USD per 1M cached input tokens", max_digits=12, decimal_places=6, default=Decimal(0)
    )
    per_image = models.DecimalField("USD per image", max_digits=12, decimal_places=6, default=Decimal(0))
    per_audio_second = models.DecimalField(
        "USD per audio second", max_digits=12, decimal_places=8, default=Decimal(0)
    )
    max_output_tokens = models.PositiveIntegerField(
        default=4096, help_text="Cap on the output reserved for one request (the worst case admitted)"
    )
    allowed_groups = models.ManyToManyField(
        Group,
        blank=True,
        related_name="allowed_models",
        help_text="Departments that may use it; none = everyone",
    )
    fallbacks = models.JSONField(
        default=list,
        blank=True,
        help_text="Public model names tried in order when every deployment of this one fails",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "model"

    def __str__(self) -> str:
        return self.name


class Deployment(models.Model):
    """Binds a public model to one provider's model (or Azure deployment name), with a weight."""

    model = models.ForeignKey(CatalogModel, on_delete=models.CASCADE, related_name="deployments")
    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="deployments")
    provider_model = models.CharField(
        max_length=200, help_text="The provider's model name or Azure deployment"
    )
    weight = models.PositiveIntegerField(default=1)
    priority = models.PositiveSmallIntegerField(
        default=0, help_text="Lower first; higher priorities are fallbacks"
    )
    enabled = models.BooleanField(default=True)
    region = models.CharField(max_length=64, blank=True, help_text="Overrides the provider's region")
    flags = models.JSONField(default=list, blank=True, help_text="Added to the provider's flags")
    connect_timeout = models.FloatField(null=True, blank=True, help_text="Seconds; empty = the provider's")
    first_byte_timeout = models.FloatField(
        null=True, blank=True, help_text="Seconds until the response starts"
    )
    chunk_timeout = models.FloatField(
        null=True, blank=True, help_text="Seconds allowed between two stream chunks"
    )
    total_timeout = models.FloatField(
        null=True, blank=True, help_text="Seconds for the whole call; empty = the provider's"
    )

    class Meta:
        ordering = ["model__name", "priority", "provider__name"]
        constraints = [
            models.UniqueConstraint(
                fields=["model", "provider", "provider_model"], name="deployment_unique_target"
            )
        ]

    def __str__(self) -> str:
        return f"{self.model.name} → {self.provider.name}/{self.provider_model}"

    @property
    def name(self) -> str:
        """A stable label for the ledger and health views."""
        return f"{self.provider.name}/{self.provider_model}"


class DataPolicy(models.Model):
    """Where a department's requests may go. A member of several groups gets the intersection."""

    group = models.OneToOneField(Group, on_delete=models.CASCADE, related_name="data_policy")
    allowed_regions = models.JSONField(default=list, blank=True, help_text="Empty = any region")
    allowed_providers = models.JSONField(default=list, blank=True, help_text="Provider names; empty = any")
    required_flags = models.JSONField(default=list, blank=True, help_text='e.g. ["zero_data_retention"]')

    class Meta:
        verbose_name_plural = "data policies"

    def __str__(self) -> str:
        return f"data policy of {self.group}"


class ApiKeyQuerySet(models.QuerySet["ApiKey"]):
    def active(self) -> ApiKeyQuerySet:
        now = timezone.now()
        return self.filter(revoked_at__isnull=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )


class ApiKey(models.Model):
    """An issued key. Only its digest is stored; the plaintext is shown once, at creation."""

    name = models.CharField(max_length=100)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    hint = models.CharField(
        max_length=20, editable=False, help_text="First and last characters, for recognition"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="api_keys"
    )
    app = models.ForeignKey(
        "portal.App", null=True, blank=True, on_delete=models.CASCADE, related_name="api_keys",
        help_text="For a service key: the catalogue app it belongs to (owned by the app's group)",
    )  # fmt: skip
    allowed_models = models.JSONField(
        default=list, blank=True, help_text="Model names; empty = the owner's defaults"
    )
    allowed_regions = models.JSONField(default=list, blank=True, help_text="Narrows the owner's data policy")
    allowed_providers = models.JSONField(
        default=list, blank=True, help_text="Narrows the owner's data policy"
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(user__isnull=False, app__isnull=True)
                | models.Q(user__isnull=True, app__isnull=False),
                name="apikey_has_one_owner",
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.hint})"

    @property
    def state(self) -> str:
        if self.revoked_at:
            return "revoked"
        if self.expires_at and self.expires_at <= timezone.now():
            return "expired"
        return "active"

    def set_secret(self, plaintext: str) -> None:
        """Record the digest and hint of ``plaintext``; the plaintext itself is not kept."""
        self.digest = keygen.digest(plaintext)
        self.hint = keygen.hint(plaintext)


class ConfigGeneration(models.Model):
    """One row whose number grows with every change the gateway caches (keys, models, providers).

    Each web process polls it (or its Redis twin) about once a second, so a revocation reaches
    every process within a second without any query per request.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    value = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"generation {self.value}"
