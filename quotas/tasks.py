"""Celery tasks of the quotas app: thin wrappers around services."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="quotas.alert_notify", autoretry_for=(Exception,), retry_backoff=True, max_retries=5)
def quota_alert_notify(alert_id: int) -> None:
    """Send the notifications of one soft-limit warning (idempotent: sent ones are skipped)."""
    from quotas.alerts import alert_notify
    from quotas.models import QuotaAlert

    alert = (
        QuotaAlert.objects.select_related("rule", "user")
        .filter(pk=alert_id, notified_at__isnull=True)
        .first()
    )
    if alert is not None:
        alert_notify(alert=alert)


@shared_task(name="quotas.usage_drain", ignore_result=True)
def usage_drain() -> int:
    """Write what the Redis usage buffer holds to the ledger (events a stopped web process left).

    Web processes drain the buffer themselves every USAGE_FLUSH_INTERVAL; this beat task catches
    what a process that died (or was scaled away) had pushed but nobody drained. Safe alongside
    them: the drain runs under the buffer's lock, and request ids make a re-write harmless.
    """
    from quotas.buffer import drain_once

    return drain_once()
