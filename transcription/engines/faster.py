"""faster-whisper (CTranslate2): the default engine, offline with the bundled tiny.en."""

from __future__ import annotations

import os
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
        self.whisper = WhisperModel(
            str(faster_whisper_path(model)), device=settings.TRANSCRIPTION_DEVICE,
            compute_type=settings.TRANSCRIPTION_COMPUTE_TYPE, cpu_threads=threads, local_files_only=True,
        )  # fmt: skip
        self.batched = (
            BatchedInferencePipeline(self.whisper) if settings.TRANSCRIPTION_BATCH_SIZE > 0 else None
        )

    def transcribe(self, audio: np.ndarray, options: Options, progress: Progress | None = None) -> Result:
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
        return Result(language=info.language, duration=duration, segments=segments)
