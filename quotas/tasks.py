"""Celery tasks of the quotas app: thin wrappers around services."""

from __future__ import annotations

from config.celery import app


@app.task(name="quotas.alert_notify", autoretry_for=(Exception,), retry_backoff=True, max_retries=5)
def quota_alert_notify(alert_id: int) -> None:
    """Send the notifications of one soft-limit warning (idempotent: sent ones are skipped)."""
    from quotas.maintenance import alert_deliver

    alert_deliver(alert_id=alert_id)


@app.task(name="quotas.usage_drain", ignore_result=True)
def usage_drain() -> int:
    """Write what the Redis usage buffer holds to the ledger (events a stopped web process left).

    Web processes drain the buffer themselves every USAGE_FLUSH_INTERVAL; this beat task catches
    what a process that died (or was scaled away) had pushed but nobody drained. Safe alongside
    them: the drain runs under the buffer's lock, and request ids make a re-write harmless.
    """
    from quotas.buffer import drain_once

    return drain_once()


@app.task(name="quotas.rollups_heal", ignore_result=True)
def rollups_heal(days: int = 2) -> int | None:
    """Re-derive the dashboard rollups of the last ``days`` closed days from the ledger (one worker at a time)."""
    from quotas import maintenance

    return maintenance.rollups_heal(days=days)


@app.task(name="quotas.counters_purge", ignore_result=True)
def counters_purge() -> int:
    """Delete the database quota counters of ended windows (windows reset by themselves)."""
    from quotas import maintenance

    return maintenance.counters_purge()


@app.task(name="quotas.alerts_resend", ignore_result=True)
def alerts_resend() -> int:
    """Send the soft-limit warnings of open windows whose notification never went out."""
    from quotas import maintenance

    return maintenance.alerts_resend()
