"""Limits hold exactly under concurrency across several server processes (both backends)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack
from decimal import Decimal
from typing import Any

import httpx
import pytest

from quotas.models import QuotaRule, UsageEvent
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.processes import child_env, free_port, manage, running

pytestmark = pytest.mark.slow


@pytest.fixture
def servers(catalog: Any) -> Iterator[list[str]]:
    """Two gateway processes on the same database (and Redis, when configured)."""
    with ExitStack() as stack:
        urls = []
        for _ in range(2):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            cmd = manage("serve", "--no-migrate", "--no-worker", "--port", str(port))
            stack.enter_context(running(cmd, child_env(USAGE_FLUSH_INTERVAL="0.1"), url=f"{url}/livez"))
            urls.append(url)
        yield urls


async def _fire(urls: list[str], key: str, n: int, **body: Any) -> list[httpx.Response]:
    payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}], **body}
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as client:
        calls = [
            client.post(
                f"{urls[i % len(urls)]}/v1/chat/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={**payload, "stream": i % 2 == 1},
            )  # fmt: skip
            for i in range(n)
        ]
        return list(await asyncio.gather(*calls))


def _wait_ledger(count: int) -> list[UsageEvent]:
    import time

    deadline = time.monotonic() + 15
    while UsageEvent.objects.count() < count and time.monotonic() < deadline:
        time.sleep(0.1)
    return list(UsageEvent.objects.all())


def test_exactly_k_of_50_concurrent_requests_pass_a_limit_of_k(servers: list[str], alice_key: Any) -> None:
    user, key = alice_key
    k = 7
    QuotaRule.objects.create(subject_type="user", user=user, metric="requests", window="day", limit=k)
    import time

    time.sleep(1.0)  # the rule reaches both processes
    responses = asyncio.run(_fire(servers, key, 50))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == k, statuses
    assert statuses.count(429) == 50 - k
    assert all(r.json()["error"]["code"] == "quota_exceeded" for r in responses if r.status_code == 429)
    events = _wait_ledger(50)
    assert len(events) == 50
    assert sum(1 for e in events if e.status == 200) == k


def test_concurrent_spend_never_exceeds_the_budget(
    servers: list[str], alice_key: Any, fake: FakeOpenAI
) -> None:
    user, key = alice_key
    fake.behaviour(stream_words=200)  # every answer runs to max_tokens: actual ≈ worst case
    budget = Decimal("0.0010")
    QuotaRule.objects.create(subject_type="user", user=user, metric="cost_usd", window="month", limit=budget)
    import time

    time.sleep(1.0)
    responses = asyncio.run(_fire(servers, key, 50, max_tokens=200))
    ok = [r for r in responses if r.status_code == 200]
    assert ok and len(ok) < 50
    assert all(r.json()["error"]["code"] == "budget_exceeded" for r in responses if r.status_code == 429)
    events = _wait_ledger(50)
    spent = sum((e.cost_usd for e in events), Decimal(0))
    assert Decimal(0) < spent <= budget
