"""Writing usage events to the ledger: in batches, idempotent by request id."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Case, DateTimeField, F, Value, When
from django.db.models.functions import Coalesce, Greatest

from quotas.models import UsageEvent
from quotas.rollups import events_insert, rollups_add

# The fields of an event dict as produced by the gateway's settlement (all JSON-safe).
EVENT_FIELDS = (
    "request_id", "key_id", "user_id", "group_ids", "app_id", "endpoint", "provider", "deployment", "model",
    "prompt_tokens", "completion_tokens", "cached_tokens", "images", "audio_seconds", "cost_usd",
    "latency_ms", "ttft_ms", "status", "error_kind", "streamed", "tokens_estimated", "counted",
    "prompt_id", "prompt_version",
)  # fmt: skip


def _row(event: dict[str, Any]) -> UsageEvent:
    values = {name: event[name] for name in EVENT_FIELDS if name in event}
    values["cost_usd"] = Decimal(str(values.get("cost_usd", "0")))
    values["audio_seconds"] = Decimal(str(values.get("audio_seconds", "0")))
    return UsageEvent(created_at=datetime.fromtimestamp(event["ts"], tz=UTC), **values)


def _without_dangling_references(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``events`` with references to rows deleted meanwhile (a key, user or app) set to None.

    Events wait in the buffer for up to a flush interval; an admin may delete their key or user
    in that time. One such event must not fail its whole batch (and every batch after it, since
    a failed batch stays in the buffer): the usage is kept, as SET_NULL keeps older rows.
    One query per referenced table and batch.
    """
    for field in UsageEvent._meta.concrete_fields:
        if not field.is_relation or field.attname not in EVENT_FIELDS:
            continue
        ids = {e[field.attname] for e in events if e.get(field.attname) is not None}
        if not ids:
            continue
        related = field.related_model._default_manager  # type: ignore[union-attr]
        missing = ids - set(related.filter(pk__in=ids).values_list("pk", flat=True))
        if missing:
            events = [{**e, field.attname: None} if e.get(field.attname) in missing else e for e in events]
    return events


def events_write(*, events: list[dict[str, Any]]) -> int:
    """Insert ``events`` (duplicates by request id are ignored) and touch the keys' last use.

    Alert events (soft limits crossed) become QuotaAlert rows, one per rule, subject and window;
    audit events (a refused key) become audit rows. The daily rollups get exactly the events that
    were new, in the same transaction, and a key's first use is audited once.
    """
    alerts = [e for e in events if e.get("type") == "alert"]
    audits = [e for e in events if e.get("type") == "audit"]
    events = [e for e in events if e.get("type") not in ("alert", "audit")]
    if alerts:
        from quotas.alerts import alerts_record

        alerts_record(alerts=alerts)
    if audits:
        from portal.audit import audit_events_record

        audit_events_record(events=audits)
    if not events:
        return 0
    from gateway.models import ApiKey

    events = _without_dangling_references(events)
    rows = [_row(event) for event in events]
    last_use: dict[int, float] = {}
    for event in events:
        if event.get("key_id"):
            last_use[event["key_id"]] = max(last_use.get(event["key_id"], 0.0), event["ts"])
    with transaction.atomic():
        # Only the rows actually inserted (not duplicates of a re-sent batch) reach the rollups.
        rollups_add(events=events_insert(rows=rows))
        # Never per request: one conditional UPDATE per key not used before (it decides the first
        # use even between concurrent writers), one UPDATE for all the others; never backwards.
        unused = set(
            ApiKey.objects.filter(pk__in=list(last_use), last_used_at__isnull=True).values_list(
                "pk", flat=True
            )
        )
        moments = {key_id: datetime.fromtimestamp(ts, tz=UTC) for key_id, ts in last_use.items()}
        first_uses: dict[int, datetime] = {}
        for key_id in unused:
            if ApiKey.objects.filter(pk=key_id, last_used_at__isnull=True).update(
                last_used_at=moments[key_id]
            ):
                first_uses[key_id] = moments[key_id]
        used = {key_id: moment for key_id, moment in moments.items() if key_id not in first_uses}
        if used:
            latest = Case(*(When(pk=key_id, then=Value(moment)) for key_id, moment in used.items()),
                          output_field=DateTimeField())  # fmt: skip
            ApiKey.objects.filter(pk__in=list(used)).update(
                last_used_at=Greatest(Coalesce(F("last_used_at"), latest), latest)
            )
        if first_uses:
            from portal.audit import keys_first_use

            keys_first_use(uses=first_uses)
    return len(rows)
