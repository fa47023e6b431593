"""faster-whisper (CTranslate2): the default engine, offline with the bundled tiny.en.

A long recording is cut at pauses into as many pieces as there are parallel workers, transcribed
side by side and joined: CTranslate2 hardly speeds up one decoding with a second thread (measured:
tiny.en, 57 s, 3.0 s with one thread and 3.3 s with two), while two pieces on two cores take
2.1 s. Each piece is its own run of Whisper's 30-second windows, so a piece ends where the speech
paused and no word is cut.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import numpy as np
from django.conf import settings

from transcription.engines.base import SAMPLE_RATE, Engine, Options, Progress, Result, Segment, Word
from transcription.engines.models import faster_whisper_path


class FasterWhisperEngine(Engine):
    name = "faster-whisper"

    def __init__(self, model: str) -> None:
        super().__init__(model)
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        threads = settings.TRANSCRIPTION_CPU_THREADS or os.cpu_count() or 1
        batched = settings.TRANSCRIPTION_BATCH_SIZE > 0
        # Pieces in parallel (not with the batched pipeline, which has its own parallelism), each
        # with its share of the threads.
        self.parallel = 1 if batched else max(1, settings.TRANSCRIPTION_PARALLEL or threads)
        self.whisper = WhisperModel(
            str(faster_whisper_path(model)), device=settings.TRANSCRIPTION_DEVICE,
            compute_type=settings.TRANSCRIPTION_COMPUTE_TYPE, cpu_threads=max(1, threads // self.parallel),
            num_workers=self.parallel, local_files_only=True,
        )  # fmt: skip
        self.batched = BatchedInferencePipeline(self.whisper) if batched else None
        self.pool = ThreadPoolExecutor(self.parallel, "transcribe") if self.parallel > 1 else None

    def transcribe(self, audio: np.ndarray, options: Options, progress: Progress | None = None) -> Result:
        duration = len(audio) / SAMPLE_RATE
        bounds = piece_bounds(audio, self.parallel) if self.pool is not None else [(0, len(audio))]
        if len(bounds) == 1:
            whole, language = self._transcribe(audio, options, progress)
            return Result(language=language, duration=duration, segments=whole)
        assert self.pool is not None
        # Progress is reported from this thread only (the callback may use the database).
        done = [0.0] * len(bounds)
        lock = threading.Lock()

        def run(index: int) -> tuple[list[Segment], str]:
            start, end = bounds[index]

            def piece_progress(share: float) -> None:
                with lock:
                    done[index] = share * (end - start)

            return self._transcribe(audio[start:end], options, piece_progress)

        futures = [self.pool.submit(run, i) for i in range(len(bounds))]
        pending = set(futures)
        try:
            while pending:
                _, pending = wait(pending, timeout=0.5)
                if progress is not None:
                    with lock:
                        share = min(sum(done) / len(audio), 1.0)
                    progress(share)
        except BaseException:
            # A time limit or a failed progress callback: pieces not started yet are dropped (a
            # running one can't be interrupted; it finishes in the background).
            for future in pending:
                future.cancel()
            raise
        results = [future.result() for future in futures]
        segments: list[Segment] = []
        for (start, _), (piece, _) in zip(bounds, results, strict=True):
            offset = start / SAMPLE_RATE
            for segment in piece:
                segment.id = len(segments)
                segment.seek += start // 160  # mel frames (10 ms) from the start of the recording
                segment.start += offset
                segment.end += offset
                for word in segment.words:
                    word.start += offset
                    word.end += offset
                segments.append(segment)
        if progress is not None:
            progress(1.0)
        return Result(language=results[0][1], duration=duration, segments=segments)  # the first piece's

    def _transcribe(
        self, audio: np.ndarray, options: Options, progress: Progress | None
    ) -> tuple[list[Segment], str]:
        kwargs: dict[str, Any] = {
            "language": options.language or None,
            "task": options.task,
            "initial_prompt": options.prompt or None,
            "temperature": list(options.temperatures()),
            "word_timestamps": options.word_timestamps,
            "beam_size": settings.TRANSCRIPTION_BEAM_SIZE,
            "vad_filter": settings.TRANSCRIPTION_VAD_FILTER,
            "condition_on_previous_text": settings.TRANSCRIPTION_CONDITION_ON_PREVIOUS_TEXT,
        }
        if self.batched is not None:
            pieces, info = self.batched.transcribe(
                audio, batch_size=settings.TRANSCRIPTION_BATCH_SIZE, **kwargs
            )
        else:
            pieces, info = self.whisper.transcribe(audio, **kwargs)
        duration = len(audio) / SAMPLE_RATE
        segments: list[Segment] = []
        for piece in pieces:  # a generator: decoding happens while we iterate
            segments.append(
                Segment(
                    id=len(segments),
                    seek=int(piece.seek),
                    start=float(piece.start),
                    end=float(piece.end),
                    text=piece.text,
                    tokens=[int(t) for t in piece.tokens],
                    temperature=float(piece.temperature or 0),
                    avg_logprob=float(piece.avg_logprob),
                    compression_ratio=float(piece.compression_ratio),
                    no_speech_prob=float(piece.no_speech_prob),
                    words=[
                        Word(w.word, float(w.start), float(w.end), float(w.probability))
                        for w in piece.words or ()
                    ],
                )  # fmt: skip
            )
            if progress is not None and duration:
                progress(min(float(piece.end) / duration, 1.0))
        return segments, info.language


# A pause this long between two stretches of speech is a place to cut (Silero VAD, as faster-whisper
# uses for its own filter); the cut is in its middle.
PAUSE_MS = 250
WINDOW_SECONDS = 30  # Whisper's window: shorter pieces would each still cost a whole window


def piece_bounds(audio: np.ndarray, parallel: int) -> list[tuple[int, int]]:
    """Sample ranges covering ``audio``: up to ``parallel`` pieces, cut in pauses near equal shares.

    One piece when the recording fits in one window or has no pause to cut at.
    """
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    count = min(parallel, math.ceil(len(audio) / (WINDOW_SECONDS * SAMPLE_RATE)))
    if count < 2:
        return [(0, len(audio))]
    speech = get_speech_timestamps(audio, VadOptions(min_silence_duration_ms=PAUSE_MS, speech_pad_ms=0))
    pauses = [(a["end"] + b["start"]) // 2 for a, b in zip(speech, speech[1:], strict=False)]
    return bounds_at(pauses, len(audio), count)


def bounds_at(pauses: list[int], length: int, count: int) -> list[tuple[int, int]]:
    """``count`` ranges of ``length`` samples cut at the pauses nearest to equal shares (fewer when
    two shares would cut at the same pause, one when there is no pause)."""
    cuts = sorted(
        {min(pauses, key=lambda p: abs(p - length * k // count)) for k in range(1, count)}
        if pauses
        else set()
    )
    edges = [0, *(c for c in cuts if 0 < c < length), length]
    return list(zip(edges, edges[1:], strict=False))
