"""The portal pages: upload, job list, transcript page, downloads, delete; and privacy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from quotas.models import QuotaRule
from transcription.models import JobStatus, Transcript, TranscriptionJob

pytestmark = pytest.mark.django_db(transaction=True)

SEGMENTS = [
    {"id": 0, "seek": 0, "start": 0.0, "end": 2.0, "text": " Hello team.", "tokens": [1], "temperature": 0.0,
     "avg_logprob": -0.1, "compression_ratio": 1.0, "no_speech_prob": 0.0, "words": []},
    {"id": 1, "seek": 200, "start": 2.5, "end": 4.0, "text": " See you Friday.", "tokens": [2], "temperature": 0.0,
     "avg_logprob": -0.1, "compression_ratio": 1.0, "no_speech_prob": 0.0, "words": []},
]  # fmt: skip


@pytest.fixture
def done(speaker: tuple[User, str], tmp_path: Path, settings: Any) -> TranscriptionJob:
    """A finished job of the speaker, with its media file."""
    job = TranscriptionJob(user=speaker[0], source="portal", model="whisper-1", engine="faster-whisper",
                           engine_model="tiny.en", duration=4.0, original_name="Team call (final).mp4",
                           status=JobStatus.COMPLETED, progress=1.0)  # fmt: skip
    job.media.name = f"transcription/test/{job.id.hex}.media"
    path = Path(settings.MEDIA_ROOT) / job.media.name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"media")
    job.save()
    Transcript.objects.create(
        job=job, language="en", duration=4.0, text="Hello team. See you Friday.", segments=SEGMENTS
    )
    return job


def _client(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_pages_need_a_sign_in(transactional_db: None) -> None:
    response = Client().get("/transcription/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    assert Client().post("/transcription/upload").status_code in (401, 403)  # 403: no CSRF token either


def test_one_job_per_uploaded_file_queued_with_the_options(
    speaker: tuple[User, str], clips: dict[str, Path]
) -> None:
    client = _client(speaker[0])
    page = client.get("/transcription/")
    assert (
        page.status_code == 200 and b'id="dropzone"' in page.content and b"transcription.js" in page.content
    )
    assert b"<script>" not in page.content  # no inline script (CSP)
    with clips["wav"].open("rb") as wav, clips["mp3"].open("rb") as mp3:
        response = client.post("/transcription/upload", {"file": [wav, mp3], "language": "en", "task": "transcribe",
                                                          "prompt": "quarterly, finance", "model": "whisper-1"})  # fmt: skip
    assert response.status_code == 200, response.content
    body = response.json()
    assert [j["file"] for j in body["jobs"]] == ["speech.wav", "speech.mp3"] and body["errors"] == []
    jobs = TranscriptionJob.objects.order_by("original_name")
    assert [j.status for j in jobs] == ["queued", "queued"]
    assert all(j.language == "en" and j.prompt == "quarterly, finance" and j.source == "portal" for j in jobs)
    assert all("speech" not in str(j.media.name) and str(j.media.name).endswith(".media") for j in jobs)
    listing = client.get("/transcription/jobs/", HTTP_HX_REQUEST="true")
    assert b"speech.mp3" in listing.content and b'hx-trigger="every 1s"' in listing.content
    assert b"<html" not in listing.content  # the fragment only


def test_a_bad_file_or_a_quota_refusal_is_reported_and_nothing_is_queued(
    speaker: tuple[User, str], clips: dict[str, Path], tmp_path: Path
) -> None:
    client = _client(speaker[0])
    text = tmp_path / "notes.wav"
    text.write_text("not audio " * 100)
    with text.open("rb") as fh:
        response = client.post("/transcription/upload", {"file": fh})
    assert response.status_code == 400 and "Supported formats" in response.json()["errors"][0]["message"]
    QuotaRule.objects.create(
        subject_type="user", user=speaker[0], metric="audio_seconds", window="day", limit=5
    )
    with clips["wav"].open("rb") as fh:
        response = client.post("/transcription/upload", {"file": fh})
    assert response.status_code == 429 and "Quota exceeded" in response.json()["errors"][0]["message"]
    assert not TranscriptionJob.objects.exists()


def test_the_transcript_page_shows_timestamps_copy_and_downloads(done: TranscriptionJob) -> None:
    client = _client(done.user)  # type: ignore[arg-type]
    page = client.get(f"/transcription/jobs/{done.pk}/")
    assert page.status_code == 200
    assert b"0.0\xe2\x80\x932.0 s" in page.content and b"Hello team." in page.content
    assert b"data-copy-target" in page.content
    srt = client.get(f"/transcription/jobs/{done.pk}/download.srt")
    assert srt["Content-Disposition"] == 'attachment; filename="Team_call_final_.srt"'
    assert (
        srt.content.decode()
        == "1\n00:00:00,000 --> 00:00:02,000\nHello team.\n\n2\n00:00:02,500 --> 00:00:04,000\nSee you Friday.\n"
    )
    assert client.get(f"/transcription/jobs/{done.pk}/download.vtt").content.startswith(b"WEBVTT")
    assert (
        client.get(f"/transcription/jobs/{done.pk}/download.txt").content == b"Hello team. See you Friday.\n"
    )
    assert client.get(f"/transcription/jobs/{done.pk}/download.json").json()["segments"][1]["start"] == 2.5
    assert client.get(f"/transcription/jobs/{done.pk}/download.docx").status_code == 404
    status = client.get(f"/transcription/jobs/{done.pk}/?fragment=status", HTTP_HX_REQUEST="true")
    assert status["HX-Refresh"] == "true"


def test_delete_removes_the_media_and_the_transcript(done: TranscriptionJob) -> None:
    media = Path(done.media.path)
    assert media.exists()
    response = _client(done.user).post(f"/transcription/jobs/{done.pk}/delete")  # type: ignore[arg-type]
    assert response.status_code == 302
    assert not media.exists() and not TranscriptionJob.objects.exists() and not Transcript.objects.exists()


def test_another_user_gets_a_404_everywhere(done: TranscriptionJob, listener: tuple[User, str]) -> None:
    other = _client(listener[0])
    for url in (f"/transcription/jobs/{done.pk}/", f"/transcription/jobs/{done.pk}/download.srt"):
        assert other.get(url).status_code == 404
    assert other.post(f"/transcription/jobs/{done.pk}/delete").status_code == 404
    assert b"Team call" not in other.get("/transcription/jobs/").content
    assert TranscriptionJob.objects.filter(pk=done.pk).exists()


def test_the_home_page_links_to_transcription(speaker: tuple[User, str]) -> None:
    assert b'href="/transcription/"' in _client(speaker[0]).get("/").content
