"""The portal's "my usage and limits" page."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.test import Client

from quotas.models import QuotaRule, UsageEvent

pytestmark = pytest.mark.django_db


def test_it_shows_what_is_left_and_a_chart_of_usage_per_day_and_model(alice: User, bob: User) -> None:
    QuotaRule.objects.create(subject_type="user", user=alice, metric="requests", window="day", limit=100)
    now = datetime.now(tz=UTC)
    for i, model in enumerate(["gpt-4o-mini", "gpt-4o", "gpt-4o"]):
        UsageEvent.objects.create(request_id=f"r{i}", created_at=now, user=alice, endpoint="chat/completions", model=model,
                                  status=200, prompt_tokens=10, completion_tokens=5, cost_usd=Decimal("0.001"))  # fmt: skip
    UsageEvent.objects.create(
        request_id="bob",
        created_at=now,
        user=bob,
        endpoint="chat/completions",
        model="secret-model",
        status=200,
    )
    client = Client()
    client.force_login(alice)
    page = client.get("/usage/").content.decode()
    assert "100 requests per day for user alice" in page
    assert "<svg" in page and "gpt-4o-mini" in page
    assert "3 requests, 45 tokens" in page
    assert "secret-model" not in page  # another user's usage is invisible


def test_it_needs_a_sign_in() -> None:
    assert Client().get("/usage/").status_code == 302
