"""The faster-whisper engine cuts a long recording at pauses and transcribes the pieces side by side."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.transcription.speech import LONG_SENTENCES, WER_THRESHOLD, wer
from transcription.engines import Options, decode
from transcription.engines.base import SAMPLE_RATE
from transcription.engines.faster import FasterWhisperEngine, bounds_at, piece_bounds

LONG_REFERENCE = " ".join(LONG_SENTENCES)


def test_cuts_fall_in_the_pauses_nearest_to_equal_shares() -> None:
    assert bounds_at([], 1000, 2) == [(0, 1000)]  # no pause: never cut inside speech
    assert bounds_at([300, 480, 700], 1000, 2) == [(0, 480), (480, 1000)]
    assert bounds_at([100, 260, 500, 760], 1000, 4) == [(0, 260), (260, 500), (500, 760), (760, 1000)]
    # Two shares nearest to the same pause make one cut, not an empty piece.
    assert bounds_at([900], 1000, 3) == [(0, 900), (900, 1000)]


@pytest.fixture(scope="module")
def long_audio(clips: dict[str, Path]) -> Any:
    return decode(str(clips["long"]), 3600)


def test_a_recording_of_one_window_is_not_cut(clips: dict[str, Path]) -> None:
    audio = decode(str(clips["wav"]), 3600)  # about 8 s
    assert piece_bounds(audio, 2) == [(0, len(audio))]


def test_pieces_side_by_side_give_the_whole_transcript_in_order(settings: Any, long_audio: Any) -> None:
    duration = len(long_audio) / SAMPLE_RATE
    assert duration > 30  # two windows: worth two pieces
    bounds = piece_bounds(long_audio, 2)
    assert len(bounds) == 2 and bounds[0][0] == 0 and bounds[-1][1] == len(long_audio)
    assert 0.25 < bounds[0][1] / len(long_audio) < 0.75  # near the middle, in a pause

    settings.TRANSCRIPTION_PARALLEL = 2
    parallel = FasterWhisperEngine("tiny.en")
    shares: list[float] = []
    result = parallel.transcribe(long_audio, Options(language="en"), shares.append)
    settings.TRANSCRIPTION_PARALLEL = 1
    sequential = FasterWhisperEngine("tiny.en").transcribe(long_audio, Options(language="en"))

    assert wer(LONG_REFERENCE, result.text) <= WER_THRESHOLD, result.text
    assert wer(sequential.text, result.text) <= 0.1, (sequential.text, result.text)
    assert result.language == "en" and result.duration == pytest.approx(duration)
    assert [s.id for s in result.segments] == list(range(len(result.segments)))
    starts = [s.start for s in result.segments]
    assert starts == sorted(starts) and all(s.start <= s.end <= duration + 0.5 for s in result.segments)
    # Both pieces are there: segments on each side of the cut, timed from the recording's start.
    cut = bounds[0][1] / SAMPLE_RATE
    assert any(s.end <= cut + 0.5 for s in result.segments) and any(
        s.start >= cut - 0.5 for s in result.segments
    )
    assert result.segments[-1].end > duration - 5
    assert shares == sorted(shares) and shares[-1] == 1.0


def test_a_failing_progress_callback_drops_the_pieces_not_started(settings: Any, long_audio: Any) -> None:
    """What a worker's time limit does (an exception in the waiting thread): nothing more is started."""
    settings.TRANSCRIPTION_PARALLEL = 2
    engine = FasterWhisperEngine("tiny.en")
    engine.pool = ThreadPoolExecutor(1)  # one thread for two pieces: the second waits
    started: list[int] = []
    transcribe_piece = engine._transcribe

    def counted(*args: Any) -> Any:
        started.append(len(args[0]))
        return transcribe_piece(*args)

    engine._transcribe = counted  # type: ignore[method-assign,assignment]

    class TimeLimit(Exception):
        pass

    def progress(share: float) -> None:
        raise TimeLimit

    with pytest.raises(TimeLimit):
        engine.transcribe(long_audio, Options(language="en"), progress)
    engine.pool.shutdown(wait=True)  # returns once the running piece is done
    assert len(started) == 1  # the waiting piece was cancelled, never run


FROZEN_PROBE = """
import gc, json, sys
import django
django.setup()
from transcription.engines import decode, get_engine
before = gc.get_freeze_count()
get_engine("faster-whisper", "tiny.en")
decode(sys.argv[1], 60)
print(json.dumps({"before": before, "after": gc.get_freeze_count()}))
"""


def test_a_loaded_model_leaves_the_worker_frozen_out_of_the_collector(clips: dict[str, Path]) -> None:
    # decode() runs a full collection after every file (PyAV's resampler cycles): with the worker's
    # long-lived objects frozen once the model is loaded, it no longer walks them all (85 ms).
    import json
    import subprocess
    import sys

    from tests.support.processes import child_env

    path = str(next(iter(clips.values())))
    done = subprocess.run([sys.executable, "-c", FROZEN_PROBE, path], env=child_env(), capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["before"] == 0
    assert found["after"] > 50_000
