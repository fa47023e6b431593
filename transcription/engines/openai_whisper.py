"""openai-whisper (PyTorch): the second engine, from the optional `whisper` extra.

It loads a local checkpoint with `whisper.load_model(path)`, never a download. `tiny.en` is made
from the bundled CTranslate2 weights on first use (transcription/convert.py), so both engines can
run the same weights offline. openai-whisper reports no progress while it works: 0 then 1.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from django.conf import settings

from transcription.engines.base import Engine, Options, Progress, Result, Segment, Word
from transcription.engines.models import openai_whisper_path


class OpenAIWhisperEngine(Engine):
    name = "openai-whisper"

    def __init__(self, model: str) -> None:
        super().__init__(model)
        import torch
        import whisper

        torch.set_num_threads(settings.TRANSCRIPTION_CPU_THREADS or os.cpu_count() or 1)
        device = settings.TRANSCRIPTION_DEVICE
        self.fp16 = device == "cuda"
        self.whisper = whisper.load_model(str(openai_whisper_path(model)), device=device)

    def transcribe(self, audio: np.ndarray, options: Options, progress: Progress | None = None) -> Result:
        kwargs: dict[str, Any] = {
            "language": options.language or ("en" if not self.whisper.is_multilingual else None),
            "task": options.task,
            "initial_prompt": options.prompt or None,
            "temperature": options.temperatures(),
            "word_timestamps": options.word_timestamps,
            "beam_size": settings.TRANSCRIPTION_BEAM_SIZE,
            "best_of": settings.TRANSCRIPTION_BEAM_SIZE,
            "condition_on_previous_text": settings.TRANSCRIPTION_CONDITION_ON_PREVIOUS_TEXT,
            "fp16": self.fp16,
            "verbose": None,
        }
        if progress is not None:
            progress(0.0)
        out = self.whisper.transcribe(audio, **kwargs)
        segments = [
            Segment(
                id=i,
                seek=int(s["seek"]),
                start=float(s["start"]),
                end=float(s["end"]),
                text=s["text"],
                tokens=[int(t) for t in s["tokens"]],
                temperature=float(s["temperature"]),
                avg_logprob=float(s["avg_logprob"]),
                compression_ratio=float(s["compression_ratio"]),
                no_speech_prob=float(s["no_speech_prob"]),
                words=[
                    Word(w["word"], float(w["start"]), float(w["end"]), float(w.get("probability", 0)))
                    for w in s.get("words") or ()
                ],
            )  # fmt: skip
            for i, s in enumerate(out["segments"])
        ]
        if progress is not None:
            progress(1.0)
        return Result(
            language=str(out.get("language") or "en"), duration=len(audio) / 16_000, segments=segments
        )
