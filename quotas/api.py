"""The quotas management API (django-ninja): read usage, manage rules. Staff only."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import Group
from django.db.models import Count, Sum
from django.db.models.functions import TruncDate
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Query, Router
from ninja.errors import AuthorizationError
from ninja.responses import Status
from ninja.security import HttpBearer, SessionAuth

from gateway import keys
from gateway.models import ApiKey
from gateway.sync import SyncError, SyncReport
from quotas.models import QuotaRule, UsageEvent
from quotas.reports import rule_current_usage
from quotas.schemas import RuleIn, RuleOut, RulePatch, UsageQuery, UsageRow
from quotas.sync import quotas_sync


class StaffKey(HttpBearer):
    """An issued key whose owner is staff (scripts and service integrations)."""

    def authenticate(self, request: HttpRequest, token: str) -> Any:
        if not keys.well_formed(token):
            return None
        key = ApiKey.objects.active().select_related("user").filter(digest=keys.digest(token)).first()
        if key is None or key.user is None or not key.user.is_active:
            return None
        if not key.user.is_staff:  # a valid key, but not a staff member's: 403, not "who are you?"
            raise AuthorizationError(message="The management API is for staff only.")
        return key.user


class StaffSession(SessionAuth):
    """A signed-in staff member (the admin console's session; CSRF-checked on writes)."""

    def authenticate(self, request: HttpRequest, key: str | None) -> Any:
        user = super().authenticate(request, key)
        if user is not None and not user.is_staff:
            raise AuthorizationError(message="The management API is for staff only.")
        return user


router = Router(tags=["quotas"], auth=[StaffKey(), StaffSession()])


def _out(rule: QuotaRule) -> RuleOut:
    subject = (
        f"user:{rule.user.get_username()}" if rule.user else f"key:{rule.key_id}" if rule.key_id else
        f"{'group' if rule.subject_type == 'group' else 'group-member'}:{rule.group.name if rule.group else ''}"
    )  # fmt: skip
    try:
        used: float | None = rule_current_usage(rule)
    except Exception:
        used = None
    return RuleOut(id=rule.id, label=rule.label, subject_type=rule.subject_type, subject=subject, metric=rule.metric,
                   window=rule.window, limit=rule.limit, models=rule.model_names, warn_at=rule.warn_at_percent,
                   enabled=rule.enabled, used_this_window=used)  # fmt: skip


@router.get("/rules", response=list[RuleOut], summary="List quota rules with their current usage")
def rules_list(request: HttpRequest) -> list[RuleOut]:
    return [_out(r) for r in QuotaRule.objects.select_related("user", "group", "key")]


@router.post(
    "/rules",
    response={201: RuleOut, 400: dict},
    summary="Create or update a rule (upsert by subject, metric, window, models)",
)
def rules_create(request: HttpRequest, payload: RuleIn) -> Any:
    item = {"subject": payload.subject, "metric": payload.metric, "window": payload.window, "limit": str(payload.limit),
            "models": payload.models, "warn_at": payload.warn_at, "name": payload.name, "enabled": payload.enabled}  # fmt: skip
    existing = set(QuotaRule.objects.values_list("pk", flat=True))
    try:
        quotas_sync(items=[item], report=SyncReport(), prune=False)
    except SyncError as exc:
        return Status(400, {"detail": str(exc)})
    rule = QuotaRule.objects.exclude(pk__in=existing).first() or QuotaRule.objects.order_by("-pk").first()
    assert rule is not None
    return Status(201, _out(rule))


@router.patch("/rules/{rule_id}", response=RuleOut, summary="Change a rule's limit, warning, name or state")
def rules_update(request: HttpRequest, rule_id: int, payload: RulePatch) -> RuleOut:
    rule = get_object_or_404(QuotaRule, pk=rule_id)
    if payload.limit is not None:
        rule.limit = payload.limit
    if payload.warn_at is not None:
        rule.warn_at_percent = payload.warn_at
    if payload.name is not None:
        rule.name = payload.name
    if payload.enabled is not None:
        rule.enabled = payload.enabled
    rule.save()
    return _out(rule)


@router.delete("/rules/{rule_id}", response={204: None}, summary="Delete a rule")
def rules_delete(request: HttpRequest, rule_id: int) -> Any:
    get_object_or_404(QuotaRule, pk=rule_id).delete()
    return Status(204, None)


@router.get(
    "/usage", response=list[UsageRow], summary="Usage from the ledger, grouped by day, model, user or key"
)
def usage_read(request: HttpRequest, filters: Query[UsageQuery]) -> list[UsageRow]:
    events = UsageEvent.objects.filter(counted=True)
    end = filters.end or datetime.now(tz=UTC).date()
    start = filters.start or end - timedelta(days=30)
    events = events.filter(created_at__gte=datetime.combine(start, time.min, UTC),
                           created_at__lt=datetime.combine(end + timedelta(days=1), time.min, UTC))  # fmt: skip
    # PostgreSQL text cannot hold NUL (a DataError, so a 500): no name contains one anyway.
    user, model, group_name = (
        v.replace("\x00", "") if v else v for v in (filters.user, filters.model, filters.group)
    )
    if user:
        events = events.filter(user__username=user)
    if model:
        events = events.filter(model=model)
    if group_name:
        group = get_object_or_404(Group, name=group_name)
        events = events.filter(user__groups=group)
    field = {"day": "day", "model": "model", "user": "user__username", "key": "key__name"}[filters.group_by]
    if filters.group_by == "day":
        events = events.annotate(day=TruncDate("created_at"))
    rows = (
        events.values(field)
        .annotate(
            requests=Count("id"),
            prompt=Sum("prompt_tokens"),
            completion=Sum("completion_tokens"),
            cost=Sum("cost_usd"),
        )
        .order_by(field)
    )
    return [UsageRow(key=str(r[field] or ""), requests=r["requests"], prompt_tokens=r["prompt"] or 0,
                     completion_tokens=r["completion"] or 0, cost_usd=r["cost"] or Decimal(0)) for r in rows]  # fmt: skip
