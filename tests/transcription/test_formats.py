"""Transcript formats: OpenAI's json, text, srt, vtt and verbose_json shapes."""

from __future__ import annotations

import pytest

from transcription import formats
from transcription.models import Transcript, TranscriptionJob

SEGMENTS = [
    {"id": 0, "seek": 0, "start": 0.0, "end": 2.5, "text": " Hello there.", "tokens": [1, 2], "temperature": 0.0,
     "avg_logprob": -0.2, "compression_ratio": 1.1, "no_speech_prob": 0.01,
     "words": [{"word": " Hello", "start": 0.0, "end": 0.8, "probability": 0.9},
               {"word": " there.", "start": 0.9, "end": 2.5, "probability": 0.8}]},
    {"id": 1, "seek": 250, "start": 3661.25, "end": 3663.0, "text": " Bye.", "tokens": [3], "temperature": 0.0,
     "avg_logprob": -0.3, "compression_ratio": 1.0, "no_speech_prob": 0.02, "words": []},
]  # fmt: skip


def _transcript(task: str = "transcribe") -> Transcript:
    job = TranscriptionJob(task=task, model="whisper-1")
    return Transcript(job=job, language="en", duration=3663.2, text="Hello there. Bye.", segments=SEGMENTS)


def test_timestamps() -> None:
    assert formats.timestamp(3661.25) == "01:01:01,250"
    assert formats.timestamp(0.0004, sep=".") == "00:00:00.000"


def test_srt_and_vtt() -> None:
    t = _transcript()
    assert formats.as_object(t, "srt") == (
        "1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n2\n01:01:01,250 --> 01:01:03,000\nBye.\n"
    )
    assert formats.as_object(t, "vtt").startswith("WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello there.\n")


def test_json_text_and_verbose_json() -> None:
    t = _transcript()
    assert formats.as_object(t, "json") == {
        "text": "Hello there. Bye.",
        "usage": {"type": "duration", "seconds": 3664},
    }
    assert formats.as_object(t, "text") == "Hello there. Bye.\n"
    verbose = formats.as_object(t, "verbose_json")
    assert verbose["task"] == "transcribe" and verbose["language"] == "english"
    assert "words" not in verbose and set(verbose["segments"][0]) == {
        "id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob", "compression_ratio", "no_speech_prob"
    }  # fmt: skip
    words = formats.as_object(t, "verbose_json", ("word",))
    assert "segments" not in words and words["words"][0] == {"word": "Hello", "start": 0.0, "end": 0.8}
    assert set(formats.as_object(t, "verbose_json", ("word", "segment"))) >= {"words", "segments"}
    assert formats.as_object(_transcript("translate"), "verbose_json")["task"] == "translate"
    with pytest.raises(ValueError):
        formats.as_object(t, "docx")
