"""The usage ledger: one row per request, written off the hot path, nothing lost on a graceful stop."""

from __future__ import annotations

import signal
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import openai
import pytest
from django.contrib.auth.models import Group

from gateway.models import ApiKey
from gateway.services import key_issue
from portal.models import App, AuditEvent
from quotas.ledger import events_write
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


def _used(key: ApiKey, moment: datetime) -> dict[str, Any]:
    return {"request_id": uuid.uuid4().hex, "ts": moment.timestamp(), "key_id": key.pk, "user_id": key.user_id,
            "group_ids": [], "endpoint": "chat/completions", "model": "gpt-4o-mini", "status": 200}  # fmt: skip


def test_a_batch_sets_each_keys_latest_use_once_and_never_moves_it_back(alice: Any, bob: Any) -> None:
    fresh, _ = key_issue(name="fresh", user=alice)
    known, _ = key_issue(name="known", user=bob)
    ahead, _ = key_issue(name="ahead", user=bob)
    t = [datetime(2026, 12, 1, 9, minute, tzinfo=UTC) for minute in range(6)]
    ApiKey.objects.filter(pk=known.pk).update(last_used_at=t[0])
    ApiKey.objects.filter(pk=ahead.pk).update(last_used_at=t[5])

    events_write(events=[_used(fresh, t[1]), _used(fresh, t[3]), _used(known, t[2]), _used(known, t[1]),
                         _used(ahead, t[4])])  # fmt: skip
    events_write(events=[_used(fresh, t[2])])  # older than what the first batch recorded

    assert ApiKey.objects.get(pk=fresh.pk).last_used_at == t[3]
    assert ApiKey.objects.get(pk=known.pk).last_used_at == t[2]
    assert ApiKey.objects.get(pk=ahead.pk).last_used_at == t[5]
    first = AuditEvent.objects.filter(action="key.first_use")
    assert sorted(int(e.object_id) for e in first) == [fresh.pk]
