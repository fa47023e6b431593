"""Look at an upload with ffprobe before anything decodes it.

Refuses what is not audio or video, what is longer than TRANSCRIPTION_MAX_DURATION, and files whose
duration is implausible for their size (a decompression bomb: a few kilobytes that would decode to
hours of samples), each with a clear message and before a full decode.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

# ffprobe's demuxer names of the containers we accept (it reports e.g. "mov,mp4,m4a,3gp,3g2,mj2").
ACCEPTED_FORMATS = frozenset({
    "wav", "w64", "mp3", "mov", "mp4", "m4a", "3gp", "3g2", "ogg", "flac", "webm", "matroska", "aac",
    "mpeg", "mpegts", "avi", "asf", "aiff", "amr", "caf", "wv",
})  # fmt: skip
ACCEPTED_EXTENSIONS = "flac, m4a, mkv, mov, mp3, mp4, mpeg, mpga, ogg, opus, wav, webm, avi, aac, amr, wma"
PROBE_TIMEOUT = 30
# Below this length a low byte rate is not suspicious (headers dominate short files).
BOMB_MIN_SECONDS = 30.0


class MediaError(Exception):
    """The upload cannot be transcribed; ``message`` says why, for the user."""

    def __init__(self, message: str, code: str = "invalid_file_format") -> None:
        super().__init__(message)
        self.message, self.code = message, code


@dataclass(frozen=True, slots=True)
class MediaInfo:
    format_name: str
    duration: float
    size: int
    audio_codec: str
    has_video: bool


def _ffprobe(args: list[str]) -> str:
    try:
        done = subprocess.run(
            ["ffprobe", "-v", "error", "-hide_banner", *args], capture_output=True, timeout=PROBE_TIMEOUT,
            check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise MediaError(
            "The file could not be read in time: it is not a media file we can handle."
        ) from None
    except FileNotFoundError:  # pragma: no cover - a deployment without ffmpeg
        raise MediaError("ffprobe (ffmpeg) is not installed on this server.", code="server_error") from None
    if done.returncode != 0:
        raise MediaError(
            f"The file is not an audio or video file we can read. Supported formats: {ACCEPTED_EXTENSIONS}."
        )
    return done.stdout.decode("utf-8", "replace")


def _packet_duration(path: Path) -> float:
    """The end of the last audio packet, for containers that carry no duration (browser webm)."""
    out = _ffprobe(["-select_streams", "a:0", "-show_entries", "packet=pts_time,duration_time",
                    "-of", "csv=p=0", "--", str(path)])  # fmt: skip
    end = 0.0
    for line in out.splitlines():
        values = [float(v) for v in line.split(",") if v.strip() not in ("", "N/A")]
        if values:
            end = max(end, sum(values) if len(values) == 2 else values[0])
    return end


def _float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


def _stream_duration(stream: dict[str, object]) -> float:
    """A stream's duration, from its header or (Matroska) its `DURATION` tag, `HH:MM:SS.fraction`."""
    seconds = _float(stream.get("duration"))
    tags = stream.get("tags")
    if not seconds and isinstance(tags, dict):
        tag = str(tags.get("DURATION") or tags.get("duration") or "")
        parts = tag.split(":")
        if len(parts) == 3:
            seconds = _float(parts[0]) * 3600 + _float(parts[1]) * 60 + _float(parts[2])
    return seconds


def probe(path: Path) -> MediaInfo:
    """What ``path`` holds, or a MediaError."""
    size = path.stat().st_size
    if size == 0:
        raise MediaError("The file is empty.")
    data = json.loads(
        _ffprobe(["-print_format", "json", "-show_format", "-show_streams", "--", str(path)]) or "{}"
    )
    fmt = data.get("format") or {}
    format_name = str(fmt.get("format_name") or "")
    streams = data.get("streams") or []
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    if not set(format_name.split(",")) & ACCEPTED_FORMATS or not audio:
        what = "has no audio track" if format_name in ACCEPTED_FORMATS or streams else "is not audio or video"
        raise MediaError(f"The file {what}. Supported formats: {ACCEPTED_EXTENSIONS}.")
    # The audio tracks' own durations (a longer video track is not charged), else the container's.
    # Decoding is bounded by it too (engines.decode), so a header that understates it gains nothing.
    duration = max(_stream_duration(s) for s in audio) or _float(fmt.get("duration"))
    if duration <= 0:
        duration = _packet_duration(path)
    if duration <= 0:
        raise MediaError("The file's duration cannot be determined: it holds no playable audio.")
    limit = settings.TRANSCRIPTION_MAX_DURATION
    if duration > limit:
        raise MediaError(
            f"The audio is {duration:.0f} s long; the limit is {limit:.0f} s. Split the recording.",
            code="audio_too_long",
        )
    if duration >= BOMB_MIN_SECONDS and size / duration < settings.TRANSCRIPTION_MIN_BYTES_PER_SECOND:
        raise MediaError(
            f"The file declares {duration:.0f} s of audio in only {size} bytes; it is refused as a "
            "possible decompression bomb.",
            code="suspicious_file",
        )
    return MediaInfo(
        format_name=format_name, duration=round(duration, 3), size=size,
        audio_codec=str(audio[0].get("codec_name") or ""), has_video=any(s.get("codec_type") == "video" for s in streams),
    )  # fmt: skip
