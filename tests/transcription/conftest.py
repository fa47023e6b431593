"""Fixtures of the transcription tests: speech clips, a Celery worker, a live server, keys."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from gateway.services import key_issue
from tests.support.live import LiveServer
from tests.support.processes import child_env, stop
from tests.transcription.speech import make_clips
from transcription.models import JobStatus, TranscriptionJob


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real speech made once per run (espeak-ng + ffmpeg), in several containers."""
    return make_clips(tmp_path_factory.mktemp("speech"))


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TRANSCRIPTION_MODELS_DIR of the run (openai-whisper's tiny.en checkpoint is made here)."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(autouse=True)
def _transcription_settings(settings: Any, models_dir: Path, tmp_path: Path) -> None:
    settings.TRANSCRIPTION_MODELS = {
        "whisper-1": "faster-whisper:tiny.en",
        "whisper-openai": "openai-whisper:tiny.en",
    }
    settings.TRANSCRIPTION_MODELS_DIR = models_dir
    settings.USAGE_FLUSH_INTERVAL = 0.05
    settings.GATEWAY_CONFIG_POLL_SECONDS = 0.1


@pytest.fixture(scope="module")
def worker(django_db_setup: None, django_db_blocker: Any, models_dir: Path) -> Iterator[Any]:
    """One real Celery worker (prefork, one child) on the transcription queue, for the whole module."""
    import subprocess
    import sys

    from tests.support.processes import ROOT

    env = child_env(TRANSCRIPTION_MODELS_DIR=str(models_dir), CELERY_WORKER_LOST_WAIT="1")
    cmd = [sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "prefork", "--concurrency", "1",
           "--loglevel", "WARNING", "-Q", "transcription,maintenance", "--without-gossip", "--without-mingle",
           "--without-heartbeat"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    try:
        yield proc
    finally:
        stop(proc)


@pytest.fixture
def live(transactional_db: None) -> Iterator[LiveServer]:
    """The platform on a live port; stopped (usage buffer flushed) before the test's rows are flushed."""
    with LiveServer() as server:
        yield server


@pytest.fixture
def speaker(transactional_db: None, django_user_model: type[User]) -> tuple[User, str]:
    """A user with an API key."""
    user = django_user_model.objects.create_user("speaker", "speaker@example.com", "speaker-password")
    _, plaintext = key_issue(name="speaker's key", user=user)
    return user, plaintext


@pytest.fixture
def listener(transactional_db: None, django_user_model: type[User]) -> tuple[User, str]:
    """Another user with an API key (must never see the speaker's jobs)."""
    user = django_user_model.objects.create_user("listener", "listener@example.com", "listener-password")
    _, plaintext = key_issue(name="listener's key", user=user)
    return user, plaintext


def wait_job(
    job_id: Any, timeout: float = 120.0, until: Callable[[TranscriptionJob], bool] | None = None
) -> TranscriptionJob:
    """The job once it is finished (or ``until`` holds)."""
    done = until or (lambda job: job.status in (JobStatus.COMPLETED, JobStatus.FAILED))
    deadline = time.monotonic() + timeout
    while True:
        job = TranscriptionJob.objects.get(pk=job_id)
        if done(job):
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} is still {job.status} ({job.progress:.0%})")
        time.sleep(0.05)


def counter_used(user_id: int) -> float:
    """What the one quota counter of ``user_id`` holds (a database row, or a Redis key)."""
    from django.conf import settings

    from quotas.models import QuotaCounter

    if not settings.REDIS_URL:
        return float(QuotaCounter.objects.get().used)
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    keys = list(client.scan_iter(f"q:{{u{user_id}}}:*"))
    assert len(keys) == 1, keys
    return float(client.get(keys[0]) or 0)
