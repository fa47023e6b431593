"""The engine interface: one class per Whisper implementation, loaded once per worker process."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy is imported by decode(): a web process that never decodes stays without it
    import numpy as np

SAMPLE_RATE = 16_000
# OpenAI's rule: temperature 0 means "start at 0 and fall back to higher ones when decoding fails".
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)

Progress = Callable[[float], None]


class EngineError(Exception):
    """The engine could not transcribe this input (a bad file, not a broken worker)."""


@dataclass(frozen=True, slots=True)
class Options:
    """What one job asks for; the engine settings (beam size, VAD…) come from the settings."""

    language: str | None = None
    task: str = "transcribe"
    prompt: str | None = None
    temperature: float = 0.0
    word_timestamps: bool = False

    def temperatures(self) -> tuple[float, ...]:
        return FALLBACK_TEMPERATURES if self.temperature <= 0 else (self.temperature,)


@dataclass(slots=True)
class Word:
    word: str
    start: float
    end: float
    probability: float = 0.0


@dataclass(slots=True)
class Segment:
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: list[Word] = field(default_factory=list)


@dataclass(slots=True)
class Result:
    language: str
    duration: float
    segments: list[Segment]

    @property
    def text(self) -> str:
        return "".join(segment.text for segment in self.segments).strip()

    def segments_json(self) -> list[dict[str, Any]]:
        """JSON-safe segments (words inside, rounded to milliseconds)."""
        out = []
        for segment in self.segments:
            item = asdict(segment)
            for key in ("start", "end"):
                item[key] = round(item[key], 3)
            for key in ("avg_logprob", "compression_ratio", "no_speech_prob", "temperature"):
                item[key] = round(float(item[key]), 6)
            item["words"] = [
                {"word": w["word"], "start": round(w["start"], 3), "end": round(w["end"], 3),
                 "probability": round(float(w["probability"]), 4)}
                for w in item["words"]
            ]  # fmt: skip
            out.append(item)
        return out


class Engine(ABC):
    """A loaded model. Build one per process (they are big) and reuse it for every job."""

    name: str

    def __init__(self, model: str) -> None:
        self.model = model

    @abstractmethod
    def transcribe(self, audio: np.ndarray, options: Options, progress: Progress | None = None) -> Result:
        """Transcribe 16 kHz mono float32 ``audio``; call ``progress`` with the share done (0..1)."""


def decode(path: str, max_seconds: float) -> np.ndarray:
    """16 kHz mono float32 samples of any audio or video file, decoded with PyAV as faster-whisper does.

    Stops with an EngineError past ``max_seconds`` of audio: the probe checked the declared duration,
    and this bounds the memory even when a header lies about it.
    """
    import gc

    import av
    import numpy as np

    limit = int(max_seconds * SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    total = 0
    resampler = av.audio.resampler.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    try:
        with av.open(path, mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise EngineError("The file has no audio track.")
            frames = container.decode(audio=0)
            while True:
                try:
                    frame = next(frames)
                except StopIteration:
                    frame = None
                except av.error.InvalidDataError:
                    continue  # a damaged frame: skip it, like faster-whisper does
                if frame is not None:
                    frame.pts = None  # ignore broken timestamps; None flushes the resampler
                for out in resampler.resample(frame):
                    array = out.to_ndarray().reshape(-1)
                    total += len(array)
                    if total > limit:
                        raise EngineError(
                            f"The audio decodes to more than {max_seconds:.0f} s, more than its header declares."
                        )
                    chunks.append(array)
                if frame is None:
                    break
    except av.error.FFmpegError as exc:
        raise EngineError(f"The media could not be decoded: {exc}") from exc
    finally:
        del resampler
        gc.collect()  # PyAV's resampler objects are only freed by a collection (faster-whisper#390)
    if not total:
        raise EngineError("The file holds no decodable audio.")
    return (np.concatenate(chunks).astype(np.float32) / 32768.0) if chunks else np.zeros(0, np.float32)
