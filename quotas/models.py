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
    counted = models.BooleanField(default=True, help_text="Passed admission, so it counts against quotas")

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


class Metric(models.TextChoices):
    REQUESTS = "requests", "requests"
    TOKENS = "tokens", "tokens (input + output)"
    COST = "cost_usd", "cost (USD)"
    AUDIO_SECONDS = "audio_seconds", "audio seconds"
    IMAGES = "images", "images"


class Window(models.TextChoices):
    MINUTE = "minute", "per minute"
    HOUR = "hour", "per hour"
    DAY = "day", "per day"
    MONTH = "month", "per calendar month"
    TOTAL = "total", "in total"


class SubjectType(models.TextChoices):
    KEY = "key", "one API key"
    USER = "user", "one user"
    GROUP = "group", "a group, as a shared pool"
    GROUP_MEMBER = "group_member", "each member of a group"


class QuotaRule(models.Model):
    """A limit on one metric per window for a key, a user, a group pool or each group member."""

    name = models.CharField(
        max_length=100, blank=True, help_text="Shown in refusals; defaults to a description"
    )
    subject_type = models.CharField(max_length=16, choices=SubjectType.choices)
    key = models.ForeignKey(
        "gateway.ApiKey", null=True, blank=True, on_delete=models.CASCADE, related_name="quota_rules"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="quota_rules"
    )
    group = models.ForeignKey(
        "auth.Group", null=True, blank=True, on_delete=models.CASCADE, related_name="quota_rules"
    )
    model_names = models.JSONField(
        default=list, blank=True, help_text="Model names it applies to; empty = every model"
    )
    metric = models.CharField(max_length=16, choices=Metric.choices)
    window = models.CharField(max_length=8, choices=Window.choices)
    limit = models.DecimalField(max_digits=18, decimal_places=6)
    warn_at_percent = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        help_text="Warn the user and the admins once per window when usage crosses this share",
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["subject_type", "metric", "window"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(subject_type="key", key__isnull=False, user__isnull=True, group__isnull=True)
                    | models.Q(subject_type="user", user__isnull=False, key__isnull=True, group__isnull=True)
                    | models.Q(
                        subject_type__in=["group", "group_member"],
                        group__isnull=False,
                        key__isnull=True,
                        user__isnull=True,
                    )
                ),
                name="quotarule_subject_matches_type",
            ),
            models.CheckConstraint(condition=models.Q(limit__gte=0), name="quotarule_limit_not_negative"),
        ]

    def __str__(self) -> str:
        return self.label

    @property
    def subject_label(self) -> str:
        if self.subject_type == SubjectType.KEY:
            return f"key {self.key}"
        if self.subject_type == SubjectType.USER:
            return f"user {self.user}"
        if self.subject_type == SubjectType.GROUP:
            return f"group {self.group}"
        return f"each member of {self.group}"

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        scope = f" on {', '.join(self.model_names)}" if self.model_names else ""
        return f"{self.limit.normalize():f} {self.metric} {self.get_window_display()} for {self.subject_label}{scope}"


class QuotaCounter(models.Model):
    """Embedded-mode counter: what one subject used of one rule in one window (Redis keeps these otherwise)."""

    rule = models.ForeignKey(QuotaRule, on_delete=models.CASCADE, related_name="counters")
    subject = models.CharField(max_length=48)
    bucket = models.BigIntegerField(help_text="Start of the window, epoch seconds (0 for total)")
    used = models.DecimalField(max_digits=24, decimal_places=10, default=Decimal(0))

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["rule", "subject", "bucket"], name="quotacounter_unique")
        ]

    def __str__(self) -> str:
        return f"{self.rule_id}/{self.subject}/{self.bucket}: {self.used}"


class QuotaAlert(models.Model):
    """A soft-limit warning, at most one per rule, subject and window."""

    rule = models.ForeignKey(QuotaRule, on_delete=models.CASCADE, related_name="alerts")
    subject = models.CharField(max_length=48)
    bucket = models.BigIntegerField()
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    used = models.DecimalField(max_digits=24, decimal_places=10)
    limit = models.DecimalField(max_digits=18, decimal_places=6)
    window_ends_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    notified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["rule", "subject", "bucket"], name="quotaalert_once_per_window")
        ]

    def __str__(self) -> str:
        return f"{self.rule} at {self.used}/{self.limit}"
