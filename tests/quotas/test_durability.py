"""Counters come back from the ledger: a Redis restart does not reset a budget; quotas_rebuild."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal
from io import StringIO
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User
from django.core.management import call_command

from quotas.models import QuotaCounter, QuotaRule, UsageEvent

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def _post(gateway: Any, key: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=BODY,
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )


@pytest.mark.redis
def test_a_redis_restart_does_not_reset_a_monthly_quota(
    gateway: Any, alice_key: Any, ledger: Any, settings: Any
) -> None:
    import redis

    user, key = alice_key
    QuotaRule.objects.create(subject_type="user", user=user, metric="requests", window="month", limit=3)
    time.sleep(0.3)
    assert _post(gateway, key).status_code == 200
    assert _post(gateway, key).status_code == 200
    assert len(ledger(2)) == 2
    redis.Redis.from_url(settings.REDIS_URL).flushdb()  # what a restart of a memory-only Redis does
    third = _post(gateway, key)
    assert third.status_code == 200
    assert third.headers["x-ratelimit-remaining-requests"] == "0"  # rebuilt from the ledger: 3 of 3
    assert _post(gateway, key).status_code == 429


@pytest.mark.django_db
def test_quotas_rebuild_recomputes_the_current_windows_from_the_ledger(settings: Any) -> None:
    user = User.objects.create_user("carol")
    rule = QuotaRule.objects.create(subject_type="user", user=user, metric="tokens", window="day", limit=1000)
    now = datetime.now(tz=UTC)
    common = {"user": user, "endpoint": "chat/completions", "model": "gpt-4o-mini", "status": 200}
    UsageEvent.objects.create(
        request_id="r1", created_at=now, prompt_tokens=10, completion_tokens=5, **common
    )
    UsageEvent.objects.create(
        request_id="r2", created_at=now, prompt_tokens=20, completion_tokens=7, **common
    )
    # Refused before admission: not counted.
    UsageEvent.objects.create(
        request_id="r3", created_at=now, prompt_tokens=99, counted=False, **{**common, "status": 429}
    )
    out = StringIO()
    call_command("quotas_rebuild", stdout=out)
    assert "rebuilt 1 counters" in out.getvalue()
    if settings.REDIS_URL:
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL)
        [key] = client.keys(f"q:{{u{user.pk}}}:{rule.pk}:*")
        assert float(client.get(key) or 0) == 42
    else:
        assert QuotaCounter.objects.get(rule=rule).used == Decimal(42)
