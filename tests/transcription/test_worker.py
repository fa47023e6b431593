"""A real Celery worker: real speech in several containers, a bad file, a worker killed mid-job."""

from __future__ import annotations

import os
import signal
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery.result import AsyncResult
from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone

from quotas.models import QuotaRule, UsageEvent
from tests.support.live import LiveServer
from tests.transcription.conftest import counter_used, wait_job
from tests.transcription.speech import LONG_SENTENCES, REFERENCE, WER_THRESHOLD, wer
from transcription.models import JobStatus, Transcript, TranscriptionJob
from transcription.services import job_enqueue

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _submit(live: LiveServer, key: str, path: Path, **data: str) -> str:
    with path.open("rb") as fh:
        response = httpx.post(
            f"{live.url}/v1/transcriptions", headers={"Authorization": f"Bearer {key}"},
            files={"file": (path.name, fh)}, data={"model": "whisper-1", **data}, timeout=60,
        )  # fmt: skip
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_real_speech_in_wav_mp3_and_a_video_is_transcribed_by_a_worker_that_loads_the_model_once(
    live: LiveServer, worker: Any, clips: dict[str, Path], speaker: tuple[User, str]
) -> None:
    ids = {fmt: _submit(live, speaker[1], clips[fmt]) for fmt in ("wav", "mp3", "mp4")}
    pids, loads = set(), []
    for fmt, job_id in ids.items():
        job = wait_job(job_id)
        assert job.status == JobStatus.COMPLETED, job.error
        transcript = Transcript.objects.get(job=job)
        assert wer(REFERENCE, transcript.text) <= WER_THRESHOLD, (fmt, transcript.text)
        assert transcript.language == "en" and 8.5 < transcript.duration < 10
        assert transcript.segments[0]["start"] < transcript.segments[-1]["end"]
        result: dict[str, Any] = AsyncResult(job.request_id).get(timeout=30)
        pids.add(result["pid"])
        loads.append(result["model_loads"])
    assert len(pids) == 1 and loads == [1, 1, 1]  # one process, one model load, three jobs


def test_a_bad_file_fails_its_job_with_the_reason_and_the_worker_carries_on(
    live: LiveServer, worker: Any, clips: dict[str, Path], speaker: tuple[User, str]
) -> None:
    user, key = speaker
    # A file that changed after the probe (or that the probe could not see through): garbage.
    bad = TranscriptionJob(user=user, source="job_api", model="whisper-1", engine="faster-whisper",
                           engine_model="tiny.en", duration=5.0, original_name="broken.wav")  # fmt: skip
    bad.media.name = f"transcription/test/{bad.id.hex}.media"
    path = Path(settings.MEDIA_ROOT) / bad.media.name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEthis is no audio at all" * 100)
    bad.save()
    job_enqueue(job=bad)
    good_id = _submit(live, key, clips["wav"])
    failed = wait_job(bad.pk)
    assert failed.status == JobStatus.FAILED and failed.error_code == "invalid_media"
    assert "could not be decoded" in failed.error or "no decodable audio" in failed.error
    good = wait_job(good_id)
    assert good.status == JobStatus.COMPLETED
    assert good.worker_pid == failed.worker_pid  # the same worker process carried on
    row = UsageEvent.objects.get(request_id=failed.request_id)
    assert row.status == 400 and row.audio_seconds == 0 and row.error_kind == "invalid_media"


def test_a_worker_killed_mid_job_is_retried_into_one_transcript_and_one_charge(
    live: LiveServer, worker: Any, clips: dict[str, Path], speaker: tuple[User, str]
) -> None:
    user, key = speaker
    QuotaRule.objects.create(
        subject_type="user", user=user, metric="audio_seconds", window="month", limit=1000
    )
    time.sleep(0.4)  # the rule reaches the live server's cache
    job_id = _submit(live, key, clips["long"])
    running = wait_job(job_id, until=lambda j: j.status == JobStatus.RUNNING)
    time.sleep(0.5)  # into the transcription of the first 30 s window (~2 s on two cores)
    assert TranscriptionJob.objects.get(pk=job_id).status == JobStatus.RUNNING and running.attempts == 1
    os.kill(running.worker_pid or 0, signal.SIGKILL)  # the pool's child, mid-transcription

    job = wait_job(job_id, timeout=180)
    assert job.status == JobStatus.COMPLETED, job.error
    assert job.attempts == 2 and job.worker_pid != running.worker_pid
    transcript = Transcript.objects.get(job=job)
    assert wer(" ".join(LONG_SENTENCES), transcript.text) <= WER_THRESHOLD
    rows = list(UsageEvent.objects.filter(request_id=job.request_id))
    assert len(rows) == 1 and rows[0].status == 200
    assert float(rows[0].audio_seconds) == pytest.approx(transcript.duration, abs=0.01)
    assert float(rows[0].audio_seconds) == pytest.approx(job.duration, abs=0.1)
    used = counter_used(user.pk)
    assert used == pytest.approx(float(rows[0].audio_seconds), abs=0.01)  # reserved once, settled once


def test_retention_deletes_media_and_transcripts(
    live: LiveServer, worker: Any, clips: dict[str, Path], speaker: tuple[User, str]
) -> None:
    from transcription.services import jobs_purge

    job = wait_job(_submit(live, speaker[1], clips["wav"]))
    media = Path(job.media.path)
    assert media.exists()
    assert jobs_purge() == 0
    TranscriptionJob.objects.filter(pk=job.pk).update(expires_at=timezone.now())
    assert jobs_purge() == 1
    assert not media.exists() and not TranscriptionJob.objects.exists() and not Transcript.objects.exists()
    assert UsageEvent.objects.filter(request_id=job.request_id).exists()  # the ledger keeps the charge
    assert Decimal(0) < UsageEvent.objects.get(request_id=job.request_id).audio_seconds
