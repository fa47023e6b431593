"""Redis unreachable: rate limits fail open on a local limiter, quotas and budgets fail closed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User

from gateway.services import key_issue
from quotas.models import QuotaRule, UsageEvent
from tests.support.live import LiveServer
from tests.support.servers import PrivateRedis

pytestmark = pytest.mark.slow

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


def test_rate_limits_fail_open_and_budgets_fail_closed(
    catalog: Any, fast_flush: None, private_redis: PrivateRedis, settings: Any, django_user_model: type[User]
) -> None:
    settings.REDIS_URL = private_redis.url
    alice = django_user_model.objects.create_user("alice")
    bob = django_user_model.objects.create_user("bob")
    _, alice_key = key_issue(name="a", user=alice)
    _, bob_key = key_issue(name="b", user=bob)
    QuotaRule.objects.create(subject_type="user", user=alice, metric="requests", window="minute", limit=50)
    QuotaRule.objects.create(subject_type="user", user=bob, metric="cost_usd", window="month", limit=10)
    with LiveServer() as gateway:

        def post(key: str) -> httpx.Response:
            return httpx.post(
                f"{gateway.url}/v1/chat/completions",
                json=BODY,
                headers={"Authorization": f"Bearer {key}"},
                timeout=10,
            )

        assert post(alice_key).status_code == 200
        assert post(bob_key).status_code == 200
        # Settled means in the ledger: a memory-only Redis (as here) loses what it still buffers.
        deadline = time.monotonic() + 10
        while UsageEvent.objects.count() < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        private_redis.stop()
        for _ in range(3):
            assert post(alice_key).status_code == 200  # rate limit only: local approximate limiter
        down = post(bob_key)
        assert down.status_code == 503
        assert down.json()["error"]["code"] == "quota_unavailable"
        private_redis.start()  # empty: the counters come back from the ledger
        deadline = time.monotonic() + 10
        while post(bob_key).status_code != 200:
            assert time.monotonic() < deadline, "bob never got through after Redis came back"
            time.sleep(0.2)
    # Nothing settled was lost: every answered request has its ledger row.
    assert UsageEvent.objects.filter(user=alice, status=200).count() == 4
    assert UsageEvent.objects.filter(user=bob, status=200).count() >= 2
    assert UsageEvent.objects.filter(user=bob, status=503).count() >= 1
