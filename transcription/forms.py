"""Validation of the multipart fields shared by the API and the portal (OpenAI's names and rules)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from gateway.errors import GatewayError
from transcription.formats import FORMATS
from transcription.languages import LANGUAGES
from transcription.models import Task
from transcription.services import JobRequest

MAX_PROMPT_CHARS = 4000
GRANULARITIES = ("word", "segment")


@dataclass(frozen=True, slots=True)
class Submission:
    request: JobRequest
    response_format: str
    granularities: tuple[str, ...]


def _invalid(message: str, param: str, code: str = "invalid_value") -> GatewayError:
    return GatewayError(400, message, code=code, param=param)


def _list(data: Any, name: str) -> list[str]:
    getlist = getattr(data, "getlist", None)
    if getlist is not None:
        return [str(v) for v in getlist(f"{name}[]") + getlist(name)]
    value = data.get(name) or data.get(f"{name}[]")
    return [str(v) for v in value] if isinstance(value, list) else ([str(value)] if value else [])


def submission_parse(
    data: Mapping[str, Any], *, task: str, default_model: str = "", task_field: bool = False
) -> Submission:
    """The validated request of a multipart form, or a 400 naming the field.

    ``task_field``: the form may choose the task (the portal, the job API); else it is ``task``.
    """
    model = str(data.get("model") or default_model).strip()
    if not model:
        raise GatewayError(400, "You must provide a model parameter.", code="missing_model", param="model")
    language = str(data.get("language") or "").strip().lower()
    if language in ("auto", "detect"):
        language = ""
    if language and language not in LANGUAGES:
        raise _invalid(
            f"`{language[:20]}` is not a supported language: use an ISO-639-1 code such as `en`.", "language"
        )
    chosen_task = str(data.get("task") or task) if task_field else task
    if chosen_task not in Task.values:
        raise _invalid("`task` must be `transcribe` or `translate`.", "task")
    prompt = str(data.get("prompt") or "")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise _invalid(f"`prompt` is longer than {MAX_PROMPT_CHARS} characters.", "prompt")
    response_format = str(data.get("response_format") or "json")
    if response_format not in FORMATS:
        raise _invalid(f"`response_format` must be one of {', '.join(FORMATS)}.", "response_format")
    raw_temperature = data.get("temperature")
    try:
        temperature = float(raw_temperature) if raw_temperature not in (None, "") else 0.0
    except (TypeError, ValueError):
        raise _invalid(
            "`temperature` must be a number between 0 and 1.", "temperature", "invalid_type"
        ) from None
    if not 0.0 <= temperature <= 1.0:
        raise _invalid("`temperature` must be between 0 and 1.", "temperature")
    granularities = tuple(dict.fromkeys(_list(data, "timestamp_granularities")))
    for value in granularities:
        if value not in GRANULARITIES:
            raise _invalid(
                "`timestamp_granularities[]` takes `word` and/or `segment`.", "timestamp_granularities"
            )
    if granularities and response_format != "verbose_json":
        raise _invalid(
            "`timestamp_granularities[]` needs `response_format` set to `verbose_json`.",
            "timestamp_granularities",
        )
    request = JobRequest(
        model=model, language=language, task=chosen_task, prompt=prompt,
        temperature=temperature, word_timestamps="word" in granularities,
    )  # fmt: skip
    return Submission(request=request, response_format=response_format, granularities=granularities)


def default_model() -> str:
    return str(settings.TRANSCRIPTION_DEFAULT_MODEL)
