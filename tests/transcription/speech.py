"""Real speech made in the test run: espeak-ng speaks, ffmpeg packs it into containers; and WER."""

from __future__ import annotations

import subprocess
from pathlib import Path

import jiwer

SENTENCES = (
    "Please send the quarterly report to the finance team before Friday afternoon.",
    "Good morning everyone. Thank you for joining the meeting.",
)
REFERENCE = " ".join(SENTENCES)
# A longer recording (35 s) for the kill-a-worker test: long enough to be caught mid-transcription.
# Different sentences: a repeated one would trip Whisper's compression-ratio fallback.
LONG_SENTENCES = (
    *SENTENCES,
    "Our new office opens next month, and everyone will have a desk near the window.",
    "The train to the airport leaves every twenty minutes from the main station.",
    "We should review the marketing plan together on Tuesday.",
    "The kitchen on the third floor is closed for cleaning this week.",
    "Remember to lock the door when you leave the building in the evening.",
    "The customer asked for a new version of the contract with a longer warranty.",
)
# tiny.en on espeak-ng's voice: measured at 0.0-0.1 on these clips; the bound leaves room for noise.
WER_THRESHOLD = 0.25


def speak(text: str, wav: Path) -> Path:
    """``text`` spoken by espeak-ng (American English) into ``wav``."""
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), text], check=True)
    return wav


def convert(source: Path, target: Path, *, video: bool = False) -> Path:
    """``source`` re-encoded by ffmpeg into ``target``'s container (with a video track when asked)."""
    cmd = ["ffmpeg", "-v", "error", "-y"]
    if video:
        cmd += ["-f", "lavfi", "-i", "color=c=navy:s=160x120:r=5", "-i", str(source), "-shortest",
                "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]  # fmt: skip
    else:
        cmd += ["-i", str(source)]
    subprocess.run([*cmd, str(target)], check=True)
    return target


def make_clips(directory: Path) -> dict[str, Path]:
    """The reference speech as wav, mp3, mp4 (H.264 video + AAC), mkv, and a long wav."""
    wav = speak(REFERENCE, directory / "speech.wav")
    return {
        "wav": wav,
        "mp3": convert(wav, directory / "speech.mp3"),
        "mp4": convert(wav, directory / "speech.mp4", video=True),
        "mkv": convert(wav, directory / "speech.mkv", video=True),
        "long": speak(" ".join(LONG_SENTENCES), directory / "long.wav"),
    }


def normalise(text: str) -> str:
    from whisper.normalizers import EnglishTextNormalizer

    return str(EnglishTextNormalizer()(text))


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate after Whisper's English normalisation (numbers, punctuation, case)."""
    return float(jiwer.wer(normalise(reference), normalise(hypothesis)))
