"""The maintenance beat: what it schedules exists, and the usage drain empties a dead process's buffer."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from django.conf import settings

from quotas.buffer import REDIS_LIST
from quotas.models import UsageEvent
from quotas.tasks import usage_drain


def test_every_scheduled_task_is_a_registered_task_on_a_queue_the_workers_consume() -> None:
    from config.celery import app

    app.loader.import_default_modules()
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        assert entry["task"] in app.tasks, entry["task"]
        assert entry["options"] == {"queue": "maintenance"}


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_the_drain_writes_what_a_dead_web_process_left_in_the_buffer(alice: Any) -> None:
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(REDIS_LIST)
    now = time.time()
    events = [{"request_id": f"req_left_{i}", "ts": now, "key_id": None, "user_id": alice.pk, "group_ids": [],
               "app_id": None, "endpoint": "chat/completions", "provider": "p", "deployment": "p/m", "model": "m",
               "prompt_tokens": 5, "completion_tokens": 1, "cached_tokens": 0, "images": 0, "audio_seconds": "0",
               "cost_usd": "0.001", "latency_ms": 10, "ttft_ms": None, "status": 200, "error_kind": "",
               "streamed": False, "tokens_estimated": False, "counted": True} for i in range(3)]  # fmt: skip
    client.rpush(REDIS_LIST, *[orjson.dumps(e) for e in events])
    assert usage_drain() == 3
    assert client.llen(REDIS_LIST) == 0
    assert UsageEvent.objects.filter(user=alice).count() == 3
    assert usage_drain() == 0  # idempotent: nothing left, nothing written twice
