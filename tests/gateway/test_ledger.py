"""The usage ledger: one row per request, written off the hot path, nothing lost on a graceful stop."""

from __future__ import annotations

import signal
import time
from typing import Any

import httpx
import openai
import pytest
from django.contrib.auth.models import Group

from gateway.models import ApiKey
from gateway.services import key_issue
from portal.models import App
from quotas.models import UsageEvent
from tests.support.processes import child_env, free_port, manage, running

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def test_an_app_key_is_accounted_to_the_app_and_its_group(
    gateway: Any, engineering: Group, ledger: Any
) -> None:
    app = App.objects.create(name="Support bot", slug="support-bot", owner_group=engineering)
    _, plaintext = key_issue(name="bot", app=app)
    sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=plaintext, max_retries=0)
    # gpt-4.1 is open to engineering only: the app's group grants it.
    sdk.chat.completions.create(model="gpt-4.1", messages=BODY["messages"])  # type: ignore[arg-type]
    [event] = ledger(1)
    assert event.app == app
    assert event.user is None
    assert event.group_ids == [engineering.id]


def test_groups_are_recorded_as_they_were_and_last_use_is_updated_in_batches(
    sdk: openai.OpenAI, alice_key: Any, engineering: Group, ledger: Any
) -> None:
    alice = alice_key[0]
    alice.groups.add(engineering)
    time.sleep(0.3)  # the change signal reaches the gateway
    for _ in range(3):
        sdk.chat.completions.create(**BODY)  # type: ignore[call-overload]
    events = ledger(3)
    assert [e.group_ids for e in events] == [[engineering.id]] * 3
    key = ApiKey.objects.get(user=alice)
    assert key.last_used_at is not None
    assert abs(key.last_used_at.timestamp() - events[-1].created_at.timestamp()) < 1


@pytest.mark.slow
def test_a_graceful_stop_loses_no_event(catalog: Any, alice_key: Any) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # Flushes only at shutdown: every event is still in the buffer when the stop comes.
    env = child_env(USAGE_FLUSH_INTERVAL="3600")
    with running(
        manage("serve", "--no-migrate", "--no-worker", "--port", str(port)), env, url=f"{url}/livez"
    ) as proc:
        headers = {"Authorization": f"Bearer {alice_key[1]}"}
        ids = [httpx.post(f"{url}/v1/chat/completions", json=BODY, headers=headers, timeout=10).headers["x-request-id"]
               for _ in range(20)]  # fmt: skip
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert set(UsageEvent.objects.values_list("request_id", flat=True)) == set(ids)
