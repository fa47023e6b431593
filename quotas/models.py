"""The usage ledger: one row per request, idempotent by request id."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
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
    # A library prompt called by id (its uuid and version number); plain values, so the ledger
    # keeps its history when a prompt is deleted.
    prompt_id = models.CharField(max_length=36, blank=True, default="")
    prompt_version = models.PositiveIntegerField(null=True, blank=True)

    objects = UsageEventQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["user", "created_at"]),
            models.Index(fields=["key", "created_at"]),
            models.Index(
                fields=["prompt_id", "created_at"],
                condition=~models.Q(prompt_id=""),
                name="usageevent_prompt",
            ),
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


# The largest limit: the column has 18 digits, 6 after the point, and SQLite keeps 15 significant
# digits, so anything above this would read back as 10^12, which the column cannot hold.
LIMIT_MAX = Decimal(999_999_999_999)


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
    limit = models.DecimalField(
        max_digits=18, decimal_places=6, validators=[MinValueValidator(0), MaxValueValidator(LIMIT_MAX)]
    )
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


# Upper bounds (ms) of the latency histogram kept in the rollups; the last bucket is open-ended.
LATENCY_BUCKETS_MS = (250, 500, 1000, 2000, 5000, 10000, 30000)
# What the dashboard's "top" tables sum (they skip the latency histogram).
TOP_MEASURES = [
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "latency_ms_sum",
    "latency_ms_max",
]


class Grain(models.IntegerChoices):
    """Which dimensions a DailyUsage row keeps (the others are 0 / "": summed over)."""

    APP_MODEL = 1, "app × model"
    USER = 2, "user"
    KEY = 3, "key"
    GROUP_APP_MODEL = 4, "group × app × model"
    GROUP_USER = 5, "group × user"
    GROUP_KEY = 6, "group × key"
    USER_MODEL = 7, "user × model"
    KEY_MODEL = 8, "key × model"
    FULL = 9, "user × key × app × model"
    GROUP_FULL = 10, "group × user × key × app × model"


class DailyUsage(models.Model):
    """Sums of the ledger per day (in QUOTA_TIME_ZONE) at several grains: what the dashboard reads.

    Each event adds to one row of every grain (quotas/rollups.py). A coarse grain answers the
    broad questions from few rows (top users over 90 days reads one row per user and day, not one
    per user, key, app, model and day); the fine grains answer the narrow, filtered ones through
    their partial indexes. Rows of the group grains exist once per group the caller was in: a
    request of a member of two groups counts in both (``cost_usd``), and half its cost goes to
    each in ``cost_share``, so the departments' shares add up to the total.

    Dimension ids are plain integers, 0 meaning "none" or "not kept by this grain" (not foreign
    keys, not NULL), so the unique constraint the incremental upsert relies on works on every
    database, and deleting a user or key keeps its history.
    """

    grain = models.PositiveSmallIntegerField(choices=Grain.choices)
    day = models.DateField()
    group_id = models.PositiveBigIntegerField(default=0)
    user_id = models.PositiveBigIntegerField(default=0)
    key_id = models.PositiveBigIntegerField(default=0)
    app_id = models.PositiveBigIntegerField(default=0)
    model = models.CharField(max_length=128, blank=True, default="")
    requests = models.PositiveBigIntegerField(default=0)
    errors = models.PositiveBigIntegerField(default=0, help_text="Requests answered with a status >= 400")
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=24, decimal_places=10, default=Decimal(0))
    cost_share = models.DecimalField(
        max_digits=24,
        decimal_places=10,
        default=Decimal(0),
        help_text="Group grains: this group's part of the cost",
    )
    latency_ms_sum = models.PositiveBigIntegerField(default=0)
    latency_ms_max = models.PositiveBigIntegerField(default=0)
    # Requests per latency bucket (LATENCY_BUCKETS_MS), for percentiles.
    lat_0 = models.PositiveBigIntegerField(default=0)
    lat_1 = models.PositiveBigIntegerField(default=0)
    lat_2 = models.PositiveBigIntegerField(default=0)
    lat_3 = models.PositiveBigIntegerField(default=0)
    lat_4 = models.PositiveBigIntegerField(default=0)
    lat_5 = models.PositiveBigIntegerField(default=0)
    lat_6 = models.PositiveBigIntegerField(default=0)
    lat_7 = models.PositiveBigIntegerField(default=0)

    class Meta:
        verbose_name_plural = "daily usage"
        constraints = [
            models.UniqueConstraint(
                fields=["grain", "day", "group_id", "user_id", "key_id", "app_id", "model"],
                name="dailyusage_unique",
            )
        ]
        # Partial indexes: each serves the filtered queries of one grain.
        indexes = [
            models.Index(
                fields=["group_id", "day"], condition=models.Q(grain=4), name="dailyusage_gam_group"
            ),
            models.Index(fields=["group_id", "day"], condition=models.Q(grain=5), name="dailyusage_gu_group"),
            models.Index(fields=["user_id", "day"], condition=models.Q(grain=5), name="dailyusage_gu_user"),
            models.Index(fields=["group_id", "day"], condition=models.Q(grain=6), name="dailyusage_gk_group"),
            models.Index(fields=["key_id", "day"], condition=models.Q(grain=6), name="dailyusage_gk_key"),
            # Covering (PostgreSQL): a model's rows are read in index order, not from all over the heap.
            models.Index(
                fields=["model", "day"],
                include=["user_id", *TOP_MEASURES],
                condition=models.Q(grain=7),
                name="dailyusage_um_model",
            ),
            models.Index(fields=["user_id", "day"], condition=models.Q(grain=7), name="dailyusage_um_user"),
            models.Index(
                fields=["model", "day"],
                include=["key_id", *TOP_MEASURES],
                condition=models.Q(grain=8),
                name="dailyusage_km_model",
            ),
            models.Index(fields=["key_id", "day"], condition=models.Q(grain=8), name="dailyusage_km_key"),
            models.Index(fields=["user_id", "day"], condition=models.Q(grain=9), name="dailyusage_full_user"),
            models.Index(fields=["key_id", "day"], condition=models.Q(grain=9), name="dailyusage_full_key"),
            models.Index(fields=["app_id", "day"], condition=models.Q(grain=9), name="dailyusage_full_app"),
            models.Index(fields=["model", "day"], condition=models.Q(grain=9), name="dailyusage_full_model"),
            models.Index(
                fields=["group_id", "model", "day"], condition=models.Q(grain=10), name="dailyusage_gfull_gm"
            ),
            models.Index(
                fields=["group_id", "app_id", "day"], condition=models.Q(grain=10), name="dailyusage_gfull_ga"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.day} grain {self.grain}: {self.requests} requests"
