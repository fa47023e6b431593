"""The `quotas:` section of the declarative file (see docs/gateway.example.yaml)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from gateway.models import ApiKey
from gateway.sync import SyncError, SyncReport
from quotas.models import LIMIT_MAX, Metric, QuotaRule, SubjectType, Window

SUBJECT_PREFIXES = {"user": SubjectType.USER, "group": SubjectType.GROUP, "group-member": SubjectType.GROUP_MEMBER,
                    "key": SubjectType.KEY}  # fmt: skip
KEYS = {"subject", "metric", "window", "limit", "models", "warn_at", "name", "enabled"}


def _subject(text: Any, where: str) -> dict[str, Any]:
    prefix, _, name = str(text).partition(":")
    if prefix not in SUBJECT_PREFIXES or not name:
        raise SyncError(f"{where}: subject must be user:NAME, group:NAME, group-member:NAME or key:ID")
    kind = SUBJECT_PREFIXES[prefix]
    if kind == SubjectType.USER:
        user = get_user_model().objects.filter(username=name).first()
        if user is None:
            raise SyncError(f"{where}: unknown user {name!r}")
        return {"subject_type": kind, "user": user, "key": None, "group": None}
    if kind == SubjectType.KEY:
        key = ApiKey.objects.filter(pk=int(name) if name.isdigit() else -1).first()
        if key is None:
            raise SyncError(f"{where}: unknown key id {name!r}")
        return {"subject_type": kind, "key": key, "user": None, "group": None}
    group, _ = Group.objects.get_or_create(name=name)
    return {"subject_type": kind, "group": group, "user": None, "key": None}


def quotas_sync(*, items: list[Any], report: SyncReport, prune: bool) -> None:
    """Upsert one rule per (subject, metric, window, models); with ``prune`` delete the others."""
    kept = []
    for i, item in enumerate(items):
        where = f"quotas[{i}]"
        if not isinstance(item, dict) or set(item) - KEYS:
            raise SyncError(f"{where}: a mapping with fields {', '.join(sorted(KEYS))}")
        for name in ("subject", "metric", "window", "limit"):
            if item.get(name) in (None, ""):
                raise SyncError(f"{where}: `{name}` is required")
        if item["metric"] not in Metric.values:
            raise SyncError(f"{where}: metric must be one of {', '.join(Metric.values)}")
        if item["window"] not in Window.values:
            raise SyncError(f"{where}: window must be one of {', '.join(Window.values)}")
        try:
            limit = Decimal(str(item["limit"])).quantize(Decimal("0.000001"))
        except InvalidOperation:
            raise SyncError(f"{where}: limit must be a number from 0 to {LIMIT_MAX:f}") from None
        if not 0 <= limit <= LIMIT_MAX:
            raise SyncError(f"{where}: limit must be from 0 to {LIMIT_MAX:f}")
        subject = _subject(item["subject"], where)
        models = sorted(item.get("models") or [])
        identity = {**subject, "metric": item["metric"], "window": item["window"]}
        rule = next(
            (r for r in QuotaRule.objects.filter(**identity) if sorted(r.model_names) == models), None
        )
        created = rule is None
        rule = rule or QuotaRule(**identity, model_names=models)
        values = {"limit": limit, "warn_at_percent": item.get("warn_at"),
                  "name": item.get("name", ""), "enabled": bool(item.get("enabled", True))}  # fmt: skip
        changed = created or any(getattr(rule, k) != v for k, v in values.items())
        for k, v in values.items():
            setattr(rule, k, v)
        if changed:
            rule.save()
            (report.created if created else report.updated).append(f"quota {rule.label}")
        kept.append(rule.pk)
    if prune:
        for rule in QuotaRule.objects.exclude(pk__in=kept):
            report.deleted.append(f"quota {rule.label}")
            rule.delete()
