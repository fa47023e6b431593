"""Writing usage events to the ledger: in batches, idempotent by request id."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Q

from quotas.models import UsageEvent

# The fields of an event dict as produced by the gateway's settlement (all JSON-safe).
EVENT_FIELDS = (
    "request_id", "key_id", "user_id", "group_ids", "app_id", "endpoint", "provider", "deployment", "model",
    "prompt_tokens", "completion_tokens", "cached_tokens", "images", "audio_seconds", "cost_usd",
    "latency_ms", "ttft_ms", "status", "error_kind", "streamed", "tokens_estimated", "counted",
)  # fmt: skip


def _row(event: dict[str, Any]) -> UsageEvent:
    values = {name: event[name] for name in EVENT_FIELDS if name in event}
    values["cost_usd"] = Decimal(str(values.get("cost_usd", "0")))
    values["audio_seconds"] = Decimal(str(values.get("audio_seconds", "0")))
    return UsageEvent(created_at=datetime.fromtimestamp(event["ts"], tz=UTC), **values)


def events_write(*, events: list[dict[str, Any]]) -> int:
    """Insert ``events`` (duplicates by request id are ignored) and touch the keys' last use.

    Alert events (soft limits crossed) become QuotaAlert rows, one per rule, subject and window.
    """
    alerts = [e for e in events if e.get("type") == "alert"]
    events = [e for e in events if e.get("type") != "alert"]
    if alerts:
        from quotas.alerts import alerts_record

        alerts_record(alerts=alerts)
    if not events:
        return 0
    from gateway.models import ApiKey

    rows = [_row(event) for event in events]
    last_use: dict[int, float] = {}
    for event in events:
        if event.get("key_id"):
            last_use[event["key_id"]] = max(last_use.get(event["key_id"], 0.0), event["ts"])
    with transaction.atomic():
        UsageEvent.objects.bulk_create(rows, ignore_conflicts=True, batch_size=500)
        # One UPDATE per key per batch, never per request; never moves last_used_at backwards.
        for key_id, ts in last_use.items():
            moment = datetime.fromtimestamp(ts, tz=UTC)
            ApiKey.objects.filter(pk=key_id).filter(
                Q(last_used_at__isnull=True) | Q(last_used_at__lt=moment)
            ).update(last_used_at=moment)
    return len(rows)
