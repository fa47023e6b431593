"""Rebuild the counters of the current windows from the ledger (the ledger is the truth)."""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction

from quotas.engine import READY_KEY, RuleInfo, load_rules
from quotas.models import QuotaCounter, UsageEvent
from quotas.windows import bounds


def metric_value(metric: str, event: dict[str, Any]) -> float:
    """How much of ``metric`` one ledger row used."""
    if metric == "requests":
        return 1.0
    if metric == "tokens":
        return float(event["prompt_tokens"] + event["completion_tokens"])
    return float(event[metric] or 0)


def _subjects(rule: RuleInfo, event: dict[str, Any]) -> list[str]:
    kind = rule.subject_type
    if kind == "key":
        return [f"k{rule.subject_id}"] if event["key_id"] == rule.subject_id else []
    if kind == "user":
        return [f"u{rule.subject_id}"] if event["user_id"] == rule.subject_id else []
    if rule.subject_id not in (event["group_ids"] or []):
        return []
    if kind == "group":
        return [f"g{rule.subject_id}"]
    return [f"u{event['user_id']}" if event["user_id"] else f"a{event['app_id'] or 0}k{event['key_id']}"]


def compute_counters(
    now: float | None = None,
) -> dict[tuple[int, str, int], tuple[RuleInfo, float, int | None]]:
    """(rule, subject, bucket) → (rule, used, window end) for every current window, from the ledger."""
    now = now or time.time()
    rules = load_rules()
    totals: dict[tuple[int, str, int], tuple[RuleInfo, float, int | None]] = {}
    by_window: dict[str, list[RuleInfo]] = defaultdict(list)
    for rule in rules:
        by_window[rule.window].append(rule)
    fields = ["key_id", "user_id", "app_id", "group_ids", "model", "prompt_tokens", "completion_tokens",
              "cost_usd", "images", "audio_seconds"]  # fmt: skip
    for window, window_rules in by_window.items():
        start, end = bounds(window, now)
        rows = UsageEvent.objects.filter(
            counted=True, created_at__gte=datetime.fromtimestamp(start, tz=UTC)
        ).values(*fields)
        for event in rows.iterator(chunk_size=5000):
            for rule in window_rules:
                if not rule.applies_to_model(event["model"]):
                    continue
                for subject in _subjects(rule, event):
                    key = (rule.id, subject, start)
                    _, used, _ = totals.get(key, (rule, 0.0, end))
                    totals[key] = (rule, used + metric_value(rule.metric, event), end)
    return totals


def counters_rebuild(now: float | None = None, *, force: bool = False) -> int:
    """Replace the live counters of the current windows by the ledger's sums; return how many.

    On Redis, only while the counters are missing (no ready marker) unless ``force``: every
    process that finds them missing calls this, and a second rebuild after the first would wipe
    the reservations admitted in between, letting concurrent requests past a limit. The marker
    is watched, so of several concurrent rebuilds exactly one is applied; the others return 0.
    """
    from quotas.engine import Counter

    if not settings.REDIS_URL:
        return _db_rebuild(compute_counters(now))
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
    try:
        if not force and client.exists(READY_KEY):
            return 0
        totals = compute_counters(now)
        with client.pipeline(transaction=True) as pipe:
            try:
                if not force:
                    pipe.watch(READY_KEY)
                    if pipe.exists(READY_KEY):
                        return 0
                pipe.multi()
                for (_, subject, bucket), (rule, used, end) in totals.items():
                    counter = Counter(rule=rule, subject=subject, bucket=bucket, end=end, reserved=0)
                    pipe.set(counter.redis_key, repr(used))
                    if counter.ttl:
                        pipe.expire(counter.redis_key, counter.ttl)
                pipe.set(READY_KEY, "1")
                pipe.execute()
            except redis.WatchError:  # another process rebuilt them first
                return 0
    finally:
        client.close()
    return len(totals)


def _db_rebuild(totals: dict[tuple[int, str, int], tuple[RuleInfo, float, int | None]]) -> int:
    with transaction.atomic():
        for (rule_id, subject, bucket), (_, used, _) in totals.items():
            QuotaCounter.objects.update_or_create(
                rule_id=rule_id, subject=subject, bucket=bucket, defaults={"used": Decimal(repr(used))}
            )
    return len(totals)
