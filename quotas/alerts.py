"""Soft-limit warnings: recorded once per rule, subject and window, then sent off the request path."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from quotas.models import QuotaAlert

logger = logging.getLogger(__name__)


def alerts_record(*, alerts: list[dict[str, Any]]) -> list[int]:
    """Create the QuotaAlert rows that do not exist yet and queue their notification."""
    from quotas.tasks import quota_alert_notify

    created = []
    for alert in alerts:
        end = alert.get("window_end")
        try:
            with transaction.atomic():
                row = QuotaAlert.objects.create(
                    rule_id=alert["rule_id"], subject=alert["subject"], bucket=alert["bucket"], user_id=alert.get("user_id"),
                    used=Decimal(repr(alert["used"])), limit=Decimal(repr(alert["limit"])),
                    window_ends_at=datetime.fromtimestamp(end, tz=UTC) if end else datetime.max.replace(tzinfo=UTC),
                )  # fmt: skip
        except IntegrityError:
            continue  # already warned in this window (another process got there first)
        created.append(row.pk)
    for pk in created:
        try:
            quota_alert_notify.delay(pk)
        except Exception:
            logger.exception("could not queue the notification of quota alert %s", pk)
    return created


def alert_notify(*, alert: QuotaAlert) -> None:
    """E-mail the user (when known) and post to the admins' webhook (when set)."""
    import httpx

    rule = alert.rule
    share = float(alert.used) / float(alert.limit) * 100 if alert.limit else 100.0
    text = f"Usage warning: {rule.label} is at {share:.0f}% ({alert.used.normalize():f} of {alert.limit.normalize():f})."
    if alert.user is not None and alert.user.email:
        send_mail(
            "LLM usage warning", text, settings.DEFAULT_FROM_EMAIL, [alert.user.email], fail_silently=False
        )
    if settings.QUOTA_ALERT_WEBHOOK_URL:
        # The `text` field is what Slack and Teams incoming webhooks display.
        payload = {"text": text, "rule_id": rule.id, "subject": alert.subject, "used": float(alert.used),
                   "limit": float(alert.limit), "window_ends_at": alert.window_ends_at.isoformat()}  # fmt: skip
        httpx.post(settings.QUOTA_ALERT_WEBHOOK_URL, json=payload, timeout=10).raise_for_status()
    alert.notified_at = timezone.now()
    alert.save(update_fields=["notified_at"])
