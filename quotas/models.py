"""The usage ledger: one row per request, idempotent by request id."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.utils import timezone


class UsageEventQuerySet(models.QuerySet["UsageEvent"]):
    def for_user(self, user: object) -> UsageEventQuerySet:
        return self.filter(user=user)

    def since(self, moment: datetime) -> UsageEventQuerySet:
        return self.filter(created_at__gte=moment)

    def this_month(self) -> UsageEventQuerySet:
        now = timezone.localtime()
        return self.since(now.replace(day=1, hour=0, minute=0, second=0, microsecond=0))


class UsageEvent(models.Model):
    """What one request used and cost. Written in batches from the usage buffer, never inline."""

    request_id = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(db_index=True)
    key = models.ForeignKey(
        "gateway.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    group_ids = models.JSONField(default=list, blank=True, help_text="The caller's groups at request time")
    app = models.ForeignKey("portal.App", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    endpoint = models.CharField(max_length=48)
    provider = models.CharField(max_length=64, blank=True)
    deployment = models.CharField(max_length=200, blank=True)
    model = models.CharField(max_length=128, blank=True, db_index=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    images = models.PositiveIntegerField(default=0)
    audio_seconds = models.DecimalField(max_digits=12, decimal_places=3, default=Decimal(0))
    cost_usd = models.DecimalField(max_digits=18, decimal_places=10, default=Decimal(0))
    latency_ms = models.PositiveIntegerField(default=0)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True, help_text="Time to first token (streams)")
    status = models.PositiveSmallIntegerField()
    error_kind = models.CharField(max_length=48, blank=True)
    streamed = models.BooleanField(default=False)
    tokens_estimated = models.BooleanField(
        default=False, help_text="Counted locally: the provider sent no usage"
    )

    objects = UsageEventQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["user", "created_at"]),
            models.Index(fields=["key", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model} {self.status}"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
