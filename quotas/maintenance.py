"""The maintenance beat's work (quotas/tasks.py wraps these): each idempotent and safe on several workers.

- ``rollups_heal`` re-derives the daily rollups of recent closed days from the ledger.
- ``counters_purge`` deletes the database counters of windows that ended (budget "resets").
- ``alert_deliver`` / ``alerts_resend`` send a soft-limit warning once, and catch the ones whose
  notification task never ran or gave up.
"""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from quotas.models import DailyUsage, QuotaAlert, QuotaCounter, Window
from quotas.rollups import day_of, rollups_rebuild
from quotas.windows import bounds

logger = logging.getLogger(__name__)

# PostgreSQL advisory lock of the rollup heal: one worker heals, the others skip.
HEAL_LOCK = int.from_bytes(hashlib.sha256(b"quotas.rollups_heal").digest()[:8], "big", signed=True)
# A counter outlives its window by this much, as a Redis counter's TTL does (quotas/engine.py): a
# request admitted just before the end still settles on its row.
COUNTER_GRACE_SECONDS = 3600


def rollups_heal(*, days: int = 2, now: datetime | None = None) -> int | None:
    """Recompute the rollups of the ``days`` closed days before today (QUOTA_TIME_ZONE) from the ledger.

    The rollups are written in the same transaction as the ledger, so they drift only when the
    ledger changes behind the gateway's back (rows deleted or restored by hand, a partial restore);
    this puts recent days right again. Today is left alone: it is still being written, and
    rebuilding it would hold up every ledger write for the length of the rebuild.

    Returns the events rolled up, or None when another worker is healing (PostgreSQL). While it
    runs, ledger writers wait at the rollups table (a SHARE ROW EXCLUSIVE lock), so a batch that
    commits meanwhile is neither lost nor counted twice; on SQLite the IMMEDIATE transaction
    serialises the same way. Running it twice, or on two workers at once, gives the same rows.
    """
    if days < 1:
        return 0
    today = day_of(now or timezone.now())
    since, until = today - timedelta(days=days), today - timedelta(days=1)
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [HEAL_LOCK])
                if not cursor.fetchone()[0]:
                    return None
                table = connection.ops.quote_name(DailyUsage._meta.db_table)
                cursor.execute(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")
        return rollups_rebuild(since=since, until=until)


def counters_purge(*, now: float | None = None) -> int:
    """Delete the database counters (embedded mode) of windows that ended over an hour ago.

    A budget "reset" needs no job: counters are keyed by the window's start, so a new window starts
    from zero on its own. Redis counters expire by TTL; the database ones are deleted here. A plain
    conditional DELETE, so several workers at once, or twice, delete the same rows once.
    """
    now = now or time.time()
    deleted = 0
    for window in (Window.MINUTE, Window.HOUR, Window.DAY, Window.MONTH):
        current_start, _ = bounds(window, now - COUNTER_GRACE_SECONDS)
        count, _ = QuotaCounter.objects.filter(rule__window=window, bucket__lt=current_start).delete()
        deleted += count
    return deleted


def alert_deliver(*, alert_id: int) -> bool:
    """Send one soft-limit warning unless it was sent; True when this call sent it.

    On PostgreSQL the alert row is locked while sending (``skip_locked``: a second worker moves on),
    so two workers never send the same warning. A failure rolls back, leaving it for a retry.
    """
    from quotas.alerts import alert_notify

    def send(alerts: Any) -> bool:
        alert = alerts.select_related("rule", "user").filter(pk=alert_id, notified_at__isnull=True).first()
        if alert is None:
            return False
        alert_notify(alert=alert)
        return True

    if not connection.features.has_select_for_update:
        # SQLite (embedded: one worker) has no row locks; an IMMEDIATE transaction would hold the
        # database's write lock for the whole e-mail and webhook call.
        return send(QuotaAlert.objects.all())
    with transaction.atomic():
        return send(QuotaAlert.objects.select_for_update(skip_locked=True, of=("self",)))


def alerts_resend(*, older_than: float = 600, limit: int = 500) -> int:
    """Send the warnings of open windows still unsent ``older_than`` seconds after they were recorded.

    The notification task is queued when the alert is recorded; if the broker was down then, or
    the task used up its retries (webhook down), nothing else would ever send it. Returns how many
    this call sent.
    """
    now = timezone.now()
    pending = QuotaAlert.objects.filter(
        notified_at__isnull=True, created_at__lt=now - timedelta(seconds=older_than), window_ends_at__gt=now
    ).order_by("created_at")
    sent = 0
    for pk in list(pending.values_list("pk", flat=True)[:limit]):
        try:
            sent += alert_deliver(alert_id=pk)
        except Exception:
            logger.exception("quota alert %s: notification failed; the next run tries again", pk)
    return sent
