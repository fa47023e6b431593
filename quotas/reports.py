"""Reading usage: current counters per rule, and ledger aggregates for pages, admin and the API."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from quotas.engine import Counter, RuleInfo
from quotas.models import QuotaAlert, QuotaCounter, QuotaRule, UsageEvent
from quotas.windows import bounds, humanize


@dataclass
class RuleUsage:
    rule: QuotaRule
    used: float
    limit: float
    resets_in: str

    @property
    def remaining(self) -> float:
        return max(0.0, self.limit - self.used)

    @property
    def percent(self) -> float:
        return min(100.0, self.used / self.limit * 100) if self.limit else 100.0


def _info(rule: QuotaRule) -> RuleInfo:
    return RuleInfo(id=rule.id, label=rule.label, subject_type=rule.subject_type, subject_id=rule.key_id or rule.user_id or rule.group_id or 0,
                    model_names=frozenset(rule.model_names), metric=rule.metric, window=rule.window, limit=float(rule.limit),
                    warn_at=None)  # fmt: skip


def counter_value(rule: QuotaRule, subject: str, now: float | None = None) -> float:
    """What ``subject`` used of ``rule`` in the current window."""
    start, end = bounds(rule.window, now or time.time())
    if settings.REDIS_URL:
        import redis

        counter = Counter(rule=_info(rule), subject=subject, bucket=start, end=end, reserved=0)
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
        try:
            return float(client.get(counter.redis_key) or 0)
        finally:
            client.close()
    row = (
        QuotaCounter.objects.filter(rule=rule, subject=subject, bucket=start)
        .values_list("used", flat=True)
        .first()
    )
    return float(row or 0)


def rules_for_user(user: User) -> QuerySet[QuotaRule]:
    """Every enabled rule that limits ``user``: their own, their keys', their groups'."""
    group_ids = list(user.groups.values_list("id", flat=True))
    return (
        QuotaRule.objects.filter(enabled=True)
        .filter(Q(user=user) | Q(key__user=user) | Q(group_id__in=group_ids))
        .select_related("user", "key", "group")
    )


def subject_of(rule: QuotaRule, user: User | None = None) -> str:
    if rule.subject_type == "key":
        return f"k{rule.key_id}"
    if rule.subject_type == "user":
        return f"u{rule.user_id}"
    if rule.subject_type == "group":
        return f"g{rule.group_id}"
    return f"u{user.pk}" if user else ""


def usage_for_user(user: User) -> list[RuleUsage]:
    """The user's rules with what is used and left of each in the current window."""
    now = time.time()
    out = []
    for rule in rules_for_user(user):
        _, end = bounds(rule.window, now)
        out.append(RuleUsage(rule=rule, used=counter_value(rule, subject_of(rule, user), now), limit=float(rule.limit),
                             resets_in=humanize(end - now) if end else "never"))  # fmt: skip
    return out


def rule_current_usage(rule: QuotaRule) -> float:
    """For the admin list: the counter of the rule's subject, or the busiest member's."""
    if rule.subject_type != "group_member":
        return counter_value(rule, subject_of(rule))
    assert rule.group is not None
    members = rule.group.user_set.values_list("id", flat=True)
    return max((counter_value(rule, f"u{pk}") for pk in members), default=0.0)


def active_alerts(user: User) -> QuerySet[QuotaAlert]:
    return QuotaAlert.objects.filter(user=user, window_ends_at__gt=timezone.now()).select_related("rule")


def daily_usage(events: QuerySet[UsageEvent], days: int = 30) -> dict[str, Any]:
    """Requests, tokens and cost per day and model over the last ``days`` days, for a chart."""
    since = timezone.now() - timedelta(days=days)
    rows = (
        events.filter(created_at__gte=since, counted=True)
        .annotate(day=TruncDate("created_at"))
        .values("day", "model")
        .annotate(
            requests=Count("id"),
            prompt=Sum("prompt_tokens"),
            completion=Sum("completion_tokens"),
            cost=Sum("cost_usd"),
        )
        .order_by("day", "model")
    )
    today = timezone.localdate()
    day_list = [today - timedelta(days=i) for i in range(days - 1, -1, -1)]
    models = sorted({r["model"] for r in rows})
    tokens: dict[tuple[date, str], int] = {}
    cost: dict[date, Decimal] = {}
    for r in rows:
        day = r["day"] if isinstance(r["day"], date) else datetime.fromisoformat(str(r["day"])).date()
        tokens[(day, r["model"])] = int(r["prompt"] or 0) + int(r["completion"] or 0)
        cost[day] = cost.get(day, Decimal(0)) + (r["cost"] or Decimal(0))
    return {"days": day_list, "models": models, "tokens": tokens, "cost": cost}
