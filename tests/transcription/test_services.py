"""Accounting of jobs without a worker: admitted once, finished once, released when failed."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from quotas.models import QuotaRule, UsageEvent
from tests.transcription.conftest import counter_used
from transcription.engines.base import Result, Segment
from transcription.models import JobStatus, Transcript, TranscriptionJob
from transcription.services import job_complete, job_fail, jobs_recover

pytestmark = pytest.mark.django_db(transaction=True)


def _upload(user: User, path: Path) -> TranscriptionJob:
    client = Client()
    client.force_login(user)
    with path.open("rb") as fh:
        response = client.post("/transcription/upload", {"file": fh})
    assert response.status_code == 200, response.content
    return TranscriptionJob.objects.get(pk=response.json()["jobs"][0]["id"])


def _result(seconds: float) -> Result:
    segment = Segment(id=0, seek=0, start=0.0, end=seconds, text=" Hello.", tokens=[1], temperature=0.0,
                      avg_logprob=-0.1, compression_ratio=1.0, no_speech_prob=0.0)  # fmt: skip
    return Result(language="en", duration=seconds, segments=[segment])


@pytest.fixture
def rule(speaker: tuple[User, str]) -> QuotaRule:
    return QuotaRule.objects.create(
        subject_type="user", user=speaker[0], metric="audio_seconds", window="day", limit=100
    )


def test_the_probed_duration_is_reserved_and_the_charge_is_final_once(
    speaker: tuple[User, str], rule: QuotaRule, clips: dict[str, Path]
) -> None:
    user = speaker[0]
    job = _upload(user, clips["wav"])
    assert job.status == JobStatus.QUEUED and job.reservation["counters"][0]["reserved"] == job.duration
    assert counter_used(user.pk) == pytest.approx(job.duration)
    assert job_complete(job=job, result=_result(9.0)) is True
    assert job_complete(job=job, result=_result(9.0)) is False  # a retried attempt: no second transcript
    assert job_fail(job=job, message="late", code="engine_error") is False
    assert Transcript.objects.filter(job=job).count() == 1
    row = UsageEvent.objects.get(request_id=job.request_id)
    assert float(row.audio_seconds) == 9.0 and row.status == 200 and row.endpoint == "audio/transcriptions"
    assert counter_used(user.pk) == pytest.approx(9.0)  # the reservation replaced by the charge, once


def test_a_failed_job_releases_its_reservation(
    speaker: tuple[User, str], rule: QuotaRule, clips: dict[str, Path]
) -> None:
    job = _upload(speaker[0], clips["mp3"])
    assert counter_used(speaker[0].pk) > 9
    assert job_fail(job=job, message="The media could not be decoded.", code="invalid_media") is True
    assert counter_used(speaker[0].pk) == pytest.approx(0.0)
    row = UsageEvent.objects.get(request_id=job.request_id)
    assert row.status == 400 and row.audio_seconds == 0 and row.counted


def test_a_job_whose_worker_vanished_is_requeued_then_given_up(
    speaker: tuple[User, str], clips: dict[str, Path]
) -> None:
    job = _upload(speaker[0], clips["wav"])
    past = timezone.now() - timedelta(minutes=1)
    TranscriptionJob.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, attempts=1, deadline_at=past)
    assert jobs_recover() == 1
    assert TranscriptionJob.objects.get(pk=job.pk).status == JobStatus.QUEUED
    TranscriptionJob.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, attempts=3, deadline_at=past)
    assert jobs_recover() == 0
    failed = TranscriptionJob.objects.get(pk=job.pk)
    assert failed.status == JobStatus.FAILED and failed.error_code == "worker_lost"


def test_when_the_queue_refuses_nothing_is_left_behind(
    speaker: tuple[User, str], rule: QuotaRule, clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from transcription import tasks

    def broker_down(*args: object, **kwargs: object) -> None:
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(tasks.run_job, "apply_async", broker_down)
    client = Client()
    client.force_login(speaker[0])
    with clips["wav"].open("rb") as fh:
        response = client.post("/transcription/upload", {"file": fh})
    assert response.status_code == 503 and "queue is unavailable" in response.json()["errors"][0]["message"]
    assert not TranscriptionJob.objects.exists()
    assert counter_used(speaker[0].pk) == pytest.approx(0.0)  # the reservation was given back
