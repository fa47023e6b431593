"""ffprobe looks at every upload before anything decodes it."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from transcription.engines import EngineError, decode
from transcription.probe import MediaError, probe


def test_it_reads_the_audio_duration_of_each_container(clips: dict[str, Path]) -> None:
    for fmt in ("wav", "mp3", "mp4", "mkv"):
        info = probe(clips[fmt])
        assert 8.9 < info.duration < 9.2, fmt  # the audio track's, not the longer video track's
        assert info.has_video == (fmt in ("mp4", "mkv"))
    assert probe(clips["mp3"]).audio_codec == "mp3"


def test_non_media_is_refused_with_the_supported_formats(tmp_path: Path) -> None:
    for name, content in (
        ("notes.mp3", b"hello " * 500),
        ("empty.wav", b""),
        ("page.webm", b"<html></html>"),
    ):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(MediaError) as caught:
            probe(path)
        assert caught.value.code == "invalid_file_format"


def test_a_video_without_sound_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "silent.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "color=c=red:s=64x64:r=5:d=2", "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", str(path)], check=True)  # fmt: skip
    with pytest.raises(MediaError, match="no audio track"):
        probe(path)


def test_over_long_audio_is_refused_before_decoding(clips: dict[str, Path], settings: Any) -> None:
    settings.TRANSCRIPTION_MAX_DURATION = 5
    with pytest.raises(MediaError) as caught:
        probe(clips["mp3"])
    assert caught.value.code == "audio_too_long" and "limit is 5 s" in caught.value.message


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    # Ten minutes of digital silence in FLAC: a few kilobytes that would decode to 10 min of samples.
    path = tmp_path / "bomb.flac"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "600",
                    str(path)], check=True)  # fmt: skip
    assert path.stat().st_size < 600 * 256
    with pytest.raises(MediaError) as caught:
        probe(path)
    assert caught.value.code == "suspicious_file"


def test_decoding_stops_past_its_bound_even_when_a_header_lies(clips: dict[str, Path]) -> None:
    audio = decode(str(clips["mp4"]), 60)
    assert audio.dtype == np.float32 and 8.9 < len(audio) / 16_000 < 9.2
    with pytest.raises(EngineError, match="more than 3 s"):
        decode(str(clips["mp4"]), 3)
