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


def _events(user: Any, prefix: str, count: int) -> list[dict[str, Any]]:
    """``count`` settled usage events of ``user``, as a web process appends them to the buffer."""
    now = time.time()
    return [{"request_id": f"{prefix}_{i}", "ts": now, "key_id": None, "user_id": user.pk, "group_ids": [],
             "app_id": None, "endpoint": "chat/completions", "provider": "p", "deployment": "p/m", "model": "m",
             "prompt_tokens": 5, "completion_tokens": 1, "cached_tokens": 0, "images": 0, "audio_seconds": "0",
             "cost_usd": "0.001", "latency_ms": 10, "ttft_ms": None, "status": 200, "error_kind": "",
             "streamed": False, "tokens_estimated": False, "counted": True} for i in range(count)]  # fmt: skip


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_the_drain_writes_what_a_dead_web_process_left_in_the_buffer(alice: Any) -> None:
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(REDIS_LIST)
    client.rpush(REDIS_LIST, *[orjson.dumps(e) for e in _events(alice, "req_left", 3)])
    assert usage_drain() == 3
    assert client.llen(REDIS_LIST) == 0
    assert UsageEvent.objects.filter(user=alice).count() == 3
    assert usage_drain() == 0  # idempotent: nothing left, nothing written twice


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_without_web_drain_the_usage_writer_writes_the_ledger(alice: Any) -> None:
    """USAGE_WEB_DRAIN off: a web process's flush leaves the buffer alone; `usage_writer` drains it,
    and on SIGTERM drains what arrived since before it exits."""
    import asyncio
    import signal
    import subprocess
    import sys

    import redis
    import redis.asyncio as aioredis

    from quotas.buffer import RedisBuffer
    from tests.support.processes import ROOT, child_env

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(REDIS_LIST)

    async def web_process() -> int:
        conn = aioredis.Redis.from_url(settings.REDIS_URL)
        buffer = RedisBuffer(conn, drain=False)
        for event in _events(alice, "req_web", 3):
            await buffer.put(event)
        written = await buffer.flush()  # what the web process's flusher does every interval
        await conn.aclose()
        return written

    assert asyncio.run(web_process()) == 0
    assert client.llen(REDIS_LIST) == 3 and not UsageEvent.objects.filter(user=alice).exists()

    writer = subprocess.Popen(
        [sys.executable, "manage.py", "usage_writer", "--interval", "0.1"],
        cwd=ROOT, env=child_env(REDIS_URL=settings.REDIS_URL), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while UsageEvent.objects.filter(user=alice).count() < 3 and time.monotonic() < deadline:
            assert writer.poll() is None, "the usage writer exited"
            time.sleep(0.05)
        assert UsageEvent.objects.filter(user=alice).count() == 3
        client.rpush(REDIS_LIST, *[orjson.dumps(e) for e in _events(alice, "req_late", 2)])
        writer.send_signal(signal.SIGTERM)
        out, _ = writer.communicate(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == 0
    assert "5 events written" in out
    assert client.llen(REDIS_LIST) == 0
    assert UsageEvent.objects.filter(user=alice).count() == 5
