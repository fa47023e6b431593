"""Transcript formats: OpenAI's json, text, srt, verbose_json and vtt shapes."""

from __future__ import annotations

import math
from typing import Any

import orjson

from transcription.languages import language_name
from transcription.models import Task, Transcript

FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
# What the portal's downloads are called and served as.
DOWNLOADS = {
    "txt": ("text", "text/plain; charset=utf-8"),
    "srt": ("srt", "application/x-subrip; charset=utf-8"),
    "vtt": ("vtt", "text/vtt; charset=utf-8"),
    "json": ("verbose_json", "application/json"),
}


def timestamp(seconds: float, *, sep: str = ",") -> str:
    """`HH:MM:SS,mmm` (SRT) or `HH:MM:SS.mmm` (WebVTT)."""
    millis = max(0, int(round(seconds * 1000)))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, ms = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{ms:03d}"


def srt(segments: list[dict[str, Any]]) -> str:
    blocks = [
        f"{i}\n{timestamp(s['start'])} --> {timestamp(s['end'])}\n{s['text'].strip()}\n"
        for i, s in enumerate(segments, start=1)
    ]
    return "\n".join(blocks)


def vtt(segments: list[dict[str, Any]]) -> str:
    blocks = [
        f"{timestamp(s['start'], sep='.')} --> {timestamp(s['end'], sep='.')}\n{s['text'].strip()}\n"
        for s in segments
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)


def usage(transcript: Transcript) -> dict[str, Any]:
    # OpenAI bills whole seconds and reports them so.
    return {"type": "duration", "seconds": math.ceil(transcript.duration)}


def verbose(transcript: Transcript, *, words: bool, segments: bool = True) -> dict[str, Any]:
    """OpenAI's verbose_json: segments (unless only words were asked for), words when asked."""
    task = transcript.job.task
    body: dict[str, Any] = {
        "task": "translate" if task == Task.TRANSLATE else "transcribe",
        "language": language_name(transcript.language),
        "duration": round(transcript.duration, 3),
        "text": transcript.text,
    }
    if segments:
        body["segments"] = [
            {key: s[key] for key in ("id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
                                     "compression_ratio", "no_speech_prob")}
            for s in transcript.segments
        ]  # fmt: skip
    if words:
        body["words"] = [
            {"word": w["word"].strip(), "start": w["start"], "end": w["end"]}
            for s in transcript.segments
            for w in s.get("words") or ()
        ]
    body["usage"] = usage(transcript)
    return body


def as_object(transcript: Transcript, fmt: str, granularities: tuple[str, ...] = ()) -> Any:
    """The response of ``fmt``: a dict for the JSON formats, a string for the others."""
    if fmt == "json":
        return {"text": transcript.text, "usage": usage(transcript)}
    if fmt == "verbose_json":
        words = "word" in granularities
        return verbose(transcript, words=words, segments="segment" in granularities or not words)
    if fmt == "text":
        return transcript.text + "\n"
    if fmt == "srt":
        return srt(transcript.segments)
    if fmt == "vtt":
        return vtt(transcript.segments)
    raise ValueError(f"unknown format {fmt!r}")


def render(transcript: Transcript, fmt: str, granularities: tuple[str, ...] = ()) -> tuple[bytes, str]:
    """(body, content type) of ``fmt`` as the OpenAI API answers it."""
    value = as_object(transcript, fmt, granularities)
    if isinstance(value, str):
        return value.encode(), "text/plain; charset=utf-8"
    return orjson.dumps(value), "application/json"
