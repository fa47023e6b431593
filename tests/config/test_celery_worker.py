"""A task runs on a real Celery worker process (not eager mode), on the configured broker."""

from __future__ import annotations

import pytest

from config.tasks import ping
from tests.support.processes import celery_worker, child_env, running

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_a_real_worker_runs_a_task() -> None:
    with running(celery_worker("celery"), child_env()):
        result = ping.delay("hello").get(timeout=60)
    assert result["payload"] == "hello"
    assert result["worker_host"]
