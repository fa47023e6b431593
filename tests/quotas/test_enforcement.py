"""Quota rules enforced on the proxy: refusals, their codes and headers, settlement."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from django.contrib.auth.models import Group, User

from quotas.models import QuotaCounter, QuotaRule
from tests.fakes.openai_upstream import FakeOpenAI

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def _post(gateway: Any, key: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{gateway.url}/v1/chat/completions", json={**BODY, **body},
                      headers={"Authorization": f"Bearer {key}"}, timeout=10)  # fmt: skip


def _settle_signal() -> None:
    time.sleep(0.3)  # rules reach the gateway's cache through the change signal


def test_a_daily_request_quota_refuses_with_quota_exceeded_and_no_retry_after(
    gateway: Any, alice_key: Any
) -> None:
    user, key = alice_key
    QuotaRule.objects.create(subject_type="user", user=user, metric="requests", window="day", limit=2)
    _settle_signal()
    first = _post(gateway, key)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    assert _post(gateway, key).headers["x-ratelimit-remaining-requests"] == "0"
    refused = _post(gateway, key)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "quota_exceeded"
    assert "2 requests per day for user alice" in error["message"] and "resets in" in error["message"]
    assert "retry-after" not in refused.headers
    assert refused.headers["x-should-retry"] == "false"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"


def test_a_rate_limit_is_retryable_with_retry_after(gateway: Any, alice_key: Any) -> None:
    user, key = alice_key
    QuotaRule.objects.create(subject_type="user", user=user, metric="requests", window="minute", limit=1)
    _settle_signal()
    assert _post(gateway, key).status_code == 200
    refused = _post(gateway, key)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(**BODY)  # type: ignore[call-overload]


def test_a_cost_budget_refuses_with_budget_exceeded(gateway: Any, alice_key: Any) -> None:
    user, key = alice_key
    # Worst case of one request: max_tokens 1000 at $0.60/Mtok output plus the prompt ≈ $0.0006.
    QuotaRule.objects.create(
        subject_type="user", user=user, metric="cost_usd", window="month", limit=Decimal("0.0005")
    )
    _settle_signal()
    refused = _post(gateway, key, max_tokens=1000)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "budget_exceeded"
    assert refused.json()["error"]["type"] == "insufficient_quota"
    assert _post(gateway, key, max_tokens=100).status_code == 200  # a smaller worst case fits


def test_a_group_pool_is_shared_and_a_member_rule_is_per_user(
    gateway: Any, alice_key: Any, engineering: Group, django_user_model: type[User]
) -> None:
    from gateway.services import key_issue

    alice, alice_plain = alice_key
    bob = django_user_model.objects.create_user("bob")
    _, bob_plain = key_issue(name="b", user=bob)
    alice.groups.add(engineering)
    bob.groups.add(engineering)
    QuotaRule.objects.create(
        subject_type="group", group=engineering, metric="requests", window="day", limit=3
    )
    QuotaRule.objects.create(
        subject_type="group_member", group=engineering, metric="requests", window="day", limit=2
    )
    _settle_signal()
    assert _post(gateway, alice_plain).status_code == 200
    assert _post(gateway, alice_plain).status_code == 200
    assert _post(gateway, alice_plain).json()["error"]["code"] == "quota_exceeded"  # alice's own 2
    assert _post(gateway, bob_plain).status_code == 200  # the pool's third
    refused = _post(gateway, bob_plain).json()["error"]
    assert refused["code"] == "quota_exceeded" and "group engineering" in refused["message"]


def test_a_rule_can_target_one_key_and_some_models(gateway: Any, alice_key: Any) -> None:
    from gateway.models import ApiKey

    _, key = alice_key
    api_key = ApiKey.objects.get()
    QuotaRule.objects.create(
        subject_type="key", key=api_key, metric="requests", window="day", limit=1, model_names=["gpt-4o"]
    )
    _settle_signal()
    assert _post(gateway, key).status_code == 200  # gpt-4o-mini is not limited
    assert _post(gateway, key).status_code == 200
    assert _post(gateway, key, model="gpt-4o").status_code == 200
    assert _post(gateway, key, model="gpt-4o").status_code == 429


def test_settlement_replaces_the_reservation_by_the_actual_tokens(
    gateway: Any, alice_key: Any, fake: FakeOpenAI, ledger: Any, settings: Any
) -> None:
    user, key = alice_key
    rule = QuotaRule.objects.create(
        subject_type="user", user=user, metric="tokens", window="day", limit=100_000
    )
    _settle_signal()
    stream = _post(gateway, key, stream=True, max_tokens=500)
    assert stream.status_code == 200
    assert int(stream.headers["x-ratelimit-remaining-tokens"]) <= 100_000 - 500  # the worst case was reserved
    fake.fail_next(500)
    assert _post(gateway, key, max_tokens=500).status_code == 502
    events = ledger(2)
    actual = sum(e.prompt_tokens + e.completion_tokens for e in events)
    deadline = time.monotonic() + 5
    while _used(rule, settings) != actual:
        assert time.monotonic() < deadline, f"counter {_used(rule, settings)} != ledger {actual}"
        time.sleep(0.05)


def _used(rule: QuotaRule, settings: Any) -> float:
    if settings.REDIS_URL:
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL)
        keys = client.keys(f"q:*:{rule.id}:*")
        return sum(float(client.get(k) or 0) for k in keys)
    return float(sum(c.used for c in QuotaCounter.objects.filter(rule=rule)))
