"""Done when: an MP4 uploaded in the portal becomes a downloadable SRT with the right text, and the
same file through the SDK returns the same transcript, each charged once in audio seconds."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
import pytest
from django.contrib.auth.models import User

from quotas.models import UsageEvent
from tests.support.browser import ARTIFACTS, signed_in_page
from tests.support.live import LiveServer
from tests.transcription.speech import REFERENCE, WER_THRESHOLD, wer
from transcription.models import Transcript, TranscriptionJob

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _srt_text(srt: str) -> str:
    return " ".join(line for line in srt.splitlines() if line and "-->" not in line and not line.isdigit())


def test_an_mp4_uploaded_in_the_portal_becomes_an_srt_and_the_sdk_agrees(
    browser: Any, live: LiveServer, worker: Any, clips: dict[str, Path], speaker: tuple[User, str]
) -> None:
    from playwright.sync_api import expect

    user, key = speaker
    page = signed_in_page(browser, live.url, user, accept_downloads=True)
    page.goto(f"{live.url}/transcription/")
    # Drag and drop: a DataTransfer holding the recording, dropped on the drop zone.
    dropped = page.evaluate_handle(
        "([name, bytes]) => { const dt = new DataTransfer();"
        " dt.items.add(new File([new Uint8Array(bytes)], name, {type: 'video/mp4'})); return dt; }",
        ["speech.mp4", list(clips["mp4"].read_bytes())],
    )
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": dropped})
    expect(page.locator("#upload-status")).to_contain_text("speech.mp4: queued", timeout=30_000)
    row = page.locator("#job-list tr[data-status=completed]")
    expect(row).to_have_count(1, timeout=90_000)  # the list polls while the job runs
    page.screenshot(path=str(ARTIFACTS / "transcription-list.png"), full_page=True)
    row.get_by_role("link", name="speech.mp4").click()
    expect(page.locator(".tr-segments")).to_contain_text("quarterly report", timeout=10_000)
    page.screenshot(path=str(ARTIFACTS / "transcription.png"), full_page=True)
    with page.expect_download() as download:
        page.get_by_role("link", name="Download .srt").click()
    srt = Path(download.value.path()).read_text()
    assert download.value.suggested_filename == "speech.srt"

    assert srt.startswith("1\n00:00:0") and wer(REFERENCE, _srt_text(srt)) <= WER_THRESHOLD, srt
    portal_job = TranscriptionJob.objects.get()
    portal_text = Transcript.objects.get(job=portal_job).text

    with openai.OpenAI(base_url=f"{live.url}/v1", api_key=key, max_retries=0, timeout=120) as sdk:
        sdk_srt = sdk.audio.transcriptions.create(
            model="whisper-1", file=clips["mp4"].open("rb"), response_format="srt"
        )
    assert sdk_srt == srt  # the same file, the same engine: the same transcript
    sdk_job = TranscriptionJob.objects.exclude(pk=portal_job.pk).get()
    assert Transcript.objects.get(job=sdk_job).text == portal_text

    deadline = time.monotonic() + 10
    while UsageEvent.objects.count() < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    rows = {event.request_id: event for event in UsageEvent.objects.all()}
    assert set(rows) == {portal_job.request_id, sdk_job.request_id}  # one charge per job, no other row
    for event in rows.values():
        assert event.user_id == user.pk and event.status == 200
        assert float(event.audio_seconds) == pytest.approx(portal_job.duration, abs=0.05)
    assert rows[sdk_job.request_id].key_id is not None and rows[portal_job.request_id].key_id is None
