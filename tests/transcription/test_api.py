"""/v1/audio/transcriptions and /translations through the official SDK, and the job API, on a real worker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from django.contrib.auth.models import User

from gateway.models import CatalogModel
from quotas.models import QuotaCounter, QuotaRule, UsageEvent
from tests.support.live import LiveServer
from tests.transcription.conftest import wait_job
from tests.transcription.speech import REFERENCE, WER_THRESHOLD, wer
from transcription.models import JobStatus, Transcript, TranscriptionJob

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PRICE = Decimal("0.0001")  # USD per audio second


@pytest.fixture
def priced(transactional_db: None) -> CatalogModel:
    return CatalogModel.objects.create(name="whisper-1", kind="audio", per_audio_second=PRICE)


@pytest.fixture
def sdk(live: LiveServer, worker: Any, speaker: tuple[User, str]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{live.url}/v1", api_key=speaker[1], max_retries=0, timeout=120) as client:
        yield client  # closed before the server stops: no keep-alive connection holds it up


def _ledger(count: int, timeout: float = 10.0, **filters: Any) -> list[UsageEvent]:
    deadline = time.monotonic() + timeout
    while True:
        rows = list(UsageEvent.objects.filter(**filters))
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_the_sdk_gets_every_response_format(sdk: openai.OpenAI, clips: dict[str, Path], priced: Any) -> None:
    wav = clips["wav"]
    as_json = sdk.audio.transcriptions.create(model="whisper-1", file=wav.open("rb"))
    assert wer(REFERENCE, as_json.text) <= WER_THRESHOLD, as_json.text
    assert as_json.usage is not None and as_json.usage.type == "duration" and as_json.usage.seconds >= 7

    text = sdk.audio.transcriptions.create(model="whisper-1", file=wav.open("rb"), response_format="text")
    assert isinstance(text, str) and text.strip() == as_json.text

    srt = sdk.audio.transcriptions.create(model="whisper-1", file=wav.open("rb"), response_format="srt")
    assert srt.startswith("1\n00:00:0") and " --> " in srt.splitlines()[1] and "," in srt.splitlines()[1]
    vtt = sdk.audio.transcriptions.create(model="whisper-1", file=wav.open("rb"), response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:0") and "." in vtt.splitlines()[2]
    for subtitles in (srt, vtt):
        spoken = " ".join(
            line for line in subtitles.splitlines() if line and "-->" not in line and not line.isdigit()
        )
        assert wer(REFERENCE, spoken.removeprefix("WEBVTT")) <= WER_THRESHOLD

    verbose = sdk.audio.transcriptions.create(
        model="whisper-1", file=wav.open("rb"), response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )  # fmt: skip
    assert verbose.language == "english" and verbose.text == as_json.text
    assert 7 < verbose.duration < 12
    assert verbose.segments and verbose.segments[0].start < verbose.segments[-1].end <= verbose.duration + 0.5
    assert verbose.words and verbose.words[0].word.strip(",.").lower() == "please"
    assert all(w.start <= w.end for w in verbose.words)
    only_words = sdk.audio.transcriptions.create(
        model="whisper-1",
        file=wav.open("rb"),
        response_format="verbose_json",
        timestamp_granularities=["word"],
    )
    assert only_words.words and only_words.segments is None

    # Each call was one job, charged once in audio seconds at the catalogue's price.
    rows = _ledger(6, endpoint="audio/transcriptions")
    assert len(rows) == 6 and all(r.request_id.startswith("job_") and r.status == 200 for r in rows)
    for row in rows:
        assert float(row.audio_seconds) == pytest.approx(verbose.duration, abs=0.05)
        assert row.cost_usd == pytest.approx(row.audio_seconds * PRICE, abs=Decimal("1e-9"))
        assert row.model == "whisper-1" and row.deployment == "faster-whisper/tiny.en"


def test_translations_answer_with_english_text(sdk: openai.OpenAI, clips: dict[str, Path]) -> None:
    out = sdk.audio.translations.create(model="whisper-1", file=clips["mp3"].open("rb"))
    assert wer(REFERENCE, out.text) <= WER_THRESHOLD
    job = TranscriptionJob.objects.get()
    assert job.task == "translate" and job.endpoint == "audio/translations"


def test_without_a_key_it_is_a_401_exactly_like_the_gateway(live: LiveServer, clips: dict[str, Path]) -> None:
    files = {"file": ("a.wav", clips["wav"].read_bytes())}
    audio = httpx.post(f"{live.url}/v1/audio/transcriptions", files=files, data={"model": "whisper-1"})
    chat = httpx.post(f"{live.url}/v1/chat/completions", json={"model": "x", "messages": []})
    assert audio.status_code == chat.status_code == 401
    assert audio.json() == chat.json()
    assert audio.json()["error"]["code"] == "missing_api_key"
    bad = httpx.post(f"{live.url}/v1/transcriptions", headers={"Authorization": "Bearer llmc-nope"})
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"


def test_over_the_sync_size_it_is_a_413_pointing_to_the_job_api(
    sdk: openai.OpenAI, clips: dict[str, Path], settings: Any
) -> None:
    settings.TRANSCRIPTION_SYNC_MAX_BYTES = 50_000
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.audio.transcriptions.create(model="whisper-1", file=clips["wav"].open("rb"))
    assert caught.value.status_code == 413
    assert "POST /v1/transcriptions" in caught.value.message
    assert not TranscriptionJob.objects.exists()


def _media_files() -> set[Path]:
    from django.conf import settings

    return {p for p in Path(settings.MEDIA_ROOT).rglob("*") if p.is_file()}


def test_bad_input_gets_a_clear_openai_error(
    sdk: openai.OpenAI, clips: dict[str, Path], tmp_path: Path
) -> None:
    before = _media_files()
    text = tmp_path / "notes.mp3"
    text.write_text("this is not a recording\n" * 50)
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.audio.transcriptions.create(model="whisper-1", file=text.open("rb"))
    assert caught.value.code == "invalid_file_format" and "Supported formats" in caught.value.message
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.audio.transcriptions.create(model="whisper-9", file=clips["wav"].open("rb"))
    assert missing.value.code == "model_not_found"
    for field, value in (("response_format", "docx"), ("temperature", "hot"), ("language", "klingon")):
        with pytest.raises(openai.BadRequestError) as invalid:
            sdk.audio.transcriptions.create(
                model="whisper-1", file=clips["wav"].open("rb"), extra_body={field: value}
            )
        assert invalid.value.param == field
    with pytest.raises(openai.BadRequestError) as granular:
        sdk.audio.transcriptions.create(
            model="whisper-1", file=clips["wav"].open("rb"), timestamp_granularities=["word"]
        )
    assert granular.value.param == "timestamp_granularities"
    auth = {"Authorization": f"Bearer {sdk.api_key}"}
    url = f"{sdk.base_url}audio/transcriptions"
    not_multipart = httpx.post(url, headers=auth, json={"model": "whisper-1"})
    assert not_multipart.status_code == 400 and not_multipart.json()["error"]["code"] == "missing_file"
    assert httpx.get(url, headers=auth).json()["error"]["code"] == "method_not_allowed"
    assert httpx.post(f"{url}/", headers=auth).json()["error"]["code"] == "unknown_route"
    assert httpx.post(f"{sdk.base_url}audio/speech", headers=auth).status_code == 404
    no_model = httpx.post(url, headers=auth, files={"file": ("a.wav", clips["wav"].read_bytes())})
    assert no_model.status_code == 400 and no_model.json()["error"]["param"] == "model"
    assert not TranscriptionJob.objects.exists()
    assert _media_files() == before  # a refused upload leaves no file behind


def test_a_quota_refusal_comes_before_anything_is_queued(
    sdk: openai.OpenAI, clips: dict[str, Path], speaker: tuple[User, str]
) -> None:
    user, _ = speaker
    QuotaRule.objects.create(subject_type="user", user=user, metric="audio_seconds", window="day", limit=20)
    time.sleep(0.4)  # the rule reaches the live server's cache
    first = sdk.audio.transcriptions.create(model="whisper-1", file=clips["wav"].open("rb"))
    assert first.text
    with pytest.raises(openai.RateLimitError) as caught:  # 9 s, 18 s, then 27 s > 20 s is refused
        for _ in range(2):
            sdk.audio.transcriptions.create(model="whisper-1", file=clips["wav"].open("rb"))
    assert caught.value.code == "quota_exceeded" and "audio_seconds" in caught.value.message
    assert TranscriptionJob.objects.count() == 2  # the refused one was never queued
    refused = _ledger(1, status=429)
    assert len(refused) == 1 and not refused[0].counted
    charged = sum(float(r.audio_seconds) for r in UsageEvent.objects.filter(status=200))
    if QuotaCounter.objects.exists():  # embedded: the counter is a row; with Redis it lives there
        assert float(QuotaCounter.objects.get().used) == pytest.approx(charged, abs=0.01)


def test_the_job_api_gives_status_progress_and_every_format(
    live: LiveServer,
    worker: Any,
    clips: dict[str, Path],
    speaker: tuple[User, str],
    listener: tuple[User, str],
) -> None:
    auth = {"Authorization": f"Bearer {speaker[1]}"}
    with clips["mkv"].open("rb") as fh:
        created = httpx.post(f"{live.url}/v1/transcriptions", headers=auth, files={"file": ("talk.mkv", fh)},
                             data={"model": "whisper-1", "language": "en"}, timeout=60)  # fmt: skip
    assert created.status_code == 202, created.text
    job = created.json()
    assert job["status"] in ("queued", "running") and job["object"] == "transcription.job"
    url = f"{live.url}/v1/transcriptions/{job['id']}"
    wait_job(job["id"])
    done = httpx.get(url, headers=auth).json()
    assert done["status"] == "completed" and done["progress"] == 1.0
    assert wer(REFERENCE, done["result"]["text"]) <= WER_THRESHOLD
    srt = httpx.get(url, headers=auth, params={"response_format": "srt"}).json()["result"]
    assert srt.startswith("1\n00:00:0")
    verbose = httpx.get(url, headers=auth, params={"response_format": "verbose_json"}).json()["result"]
    assert verbose["language"] == "english" and verbose["segments"]
    assert httpx.get(f"{live.url}/v1/transcriptions", headers=auth).json()["data"][0]["id"] == job["id"]

    # Private: another key gets a 404, as for a job that does not exist.
    other = {"Authorization": f"Bearer {listener[1]}"}
    assert httpx.get(url, headers=other).status_code == 404
    assert httpx.delete(url, headers=other).status_code == 404
    assert httpx.get(f"{live.url}/v1/transcriptions", headers=other).json()["data"] == []
    assert (
        httpx.get(f"{live.url}/v1/transcriptions/not-a-uuid", headers=auth).json()["error"]["code"]
        == "job_not_found"
    )

    media = Path(TranscriptionJob.objects.get(pk=job["id"]).media.path)
    assert media.exists() and "talk" not in media.name  # stored under a generated name
    assert httpx.delete(url, headers=auth).json()["deleted"] is True
    assert httpx.get(url, headers=auth).status_code == 404
    assert not media.exists() and not Transcript.objects.exists()


def test_the_openai_whisper_engine_runs_a_real_model(sdk: openai.OpenAI, clips: dict[str, Path]) -> None:
    out = sdk.audio.transcriptions.create(
        model="whisper-openai", file=clips["wav"].open("rb"), response_format="verbose_json"
    )
    assert wer(REFERENCE, out.text) <= WER_THRESHOLD, out.text
    job = TranscriptionJob.objects.get()
    assert job.engine == "openai-whisper" and job.status == JobStatus.COMPLETED
