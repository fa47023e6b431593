"""The OpenAI-compatible speech-to-text API, served by Django async views (multipart uploads).

`POST /v1/audio/transcriptions` and `/v1/audio/translations` take OpenAI's fields and answer in
OpenAI's shapes, so the official SDK works unchanged; they wait for the worker and answer with the
transcript. Above TRANSCRIPTION_SYNC_MAX_BYTES they answer 413 and point to the job API:
`POST /v1/transcriptions` returns a job at once, `GET /v1/transcriptions/{id}` its status, progress
and result in any format. Keys, errors and the ledger are the gateway's.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
import uuid
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import BadRequest, RequestDataTooBig, TooManyFieldsSent
from django.http import HttpRequest, HttpResponse
from django.http.multipartparser import MultiPartParserError
from django.views.decorators.csrf import csrf_exempt

from config.db import adb
from gateway.asgi import authenticate
from gateway.catalog import Principal
from gateway.errors import GatewayError
from gateway.state import GatewayState, get_state
from transcription import formats
from transcription.forms import Submission, submission_parse
from transcription.models import JobStatus, Source, Task, Transcript, TranscriptionJob
from transcription.services import job_delete, job_submit

POLL_SECONDS = (0.1, 0.2, 0.3, 0.5)


def gateway_state() -> GatewayState:
    """The gateway's per-process state, created outside the request's context when this is first.

    Its poller and flusher tasks copy the context they are created in; created inside a Django
    request they would inherit that request's thread-sensitive executor, which dies with it.
    """
    return contextvars.Context().run(get_state)


def _scope(request: HttpRequest) -> dict[str, Any]:
    """The ASGI-style view of the headers that the gateway's authentication reads."""
    headers = [
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in request.headers.items()
    ]
    return {"path": request.path, "headers": headers}


def error_response(error: GatewayError, request_id: str) -> HttpResponse:
    response = HttpResponse(error.body(), status=error.status, content_type="application/json")
    response["x-request-id"] = request_id
    for name, value in error.headers.items():
        response[name] = value
    return response


def _json(payload: Any, status: int = 200, request_id: str = "") -> HttpResponse:
    response = HttpResponse(orjson.dumps(payload), status=status, content_type="application/json")
    if request_id:
        response["x-request-id"] = request_id
    return response


def _error_event(
    principal: Principal, endpoint: str, request_id: str, error: GatewayError, model: str
) -> dict[str, Any]:
    """The ledger row of a request refused before it became a job (status and reason, nothing used)."""
    return {
        "request_id": request_id, "ts": time.time(), "key_id": principal.key_id, "user_id": principal.user_id,
        "group_ids": sorted(principal.group_ids), "app_id": principal.app_id, "endpoint": endpoint, "provider": "local",
        "deployment": "", "model": model[:128], "prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0,
        "images": 0, "audio_seconds": "0", "cost_usd": "0", "latency_ms": 0, "ttft_ms": None, "status": error.status,
        "error_kind": error.code or "error", "streamed": False, "tokens_estimated": False, "counted": False,
    }  # fmt: skip


def _model_field(request: HttpRequest) -> str:
    """The `model` field if the body was parsed (for the ledger row of a refused request)."""
    parsed = getattr(request, "_post", None)
    return str(parsed.get("model") or "") if parsed is not None else ""


def _form(request: HttpRequest) -> tuple[Any, Any]:
    """The parsed multipart fields and files (sync: Django parses the spooled body)."""
    try:
        return request.POST, request.FILES
    except (MultiPartParserError, RequestDataTooBig, TooManyFieldsSent, BadRequest) as exc:
        raise GatewayError(
            400, f"The multipart body could not be parsed: {exc}", code="invalid_body"
        ) from None


async def _submit(
    request: HttpRequest, state: GatewayState, principal: Principal, *, task: str, source: str, max_bytes: int
) -> tuple[TranscriptionJob, Submission]:
    declared = request.META.get("CONTENT_LENGTH") or ""
    if declared.isdigit() and int(declared) > max_bytes + 1024 * 1024:  # the file plus generous form overhead
        raise _too_large(int(declared), max_bytes, source)
    data, files = await sync_to_async(_form)(request)
    upload = files.get("file")
    if upload is None:
        raise GatewayError(
            400, "You must provide a file (multipart field `file`).", code="missing_file", param="file"
        )
    if upload.size > max_bytes:
        raise _too_large(upload.size, max_bytes, source)
    submission = submission_parse(data, task=task, task_field=source == Source.JOB_API)
    snapshot = await state.get_snapshot()
    job = await job_submit(
        principal=principal,
        snapshot=snapshot,
        state=state,
        upload=upload,
        request=submission.request,
        source=source,
    )
    return job, submission


def _too_large(size: int, limit: int, source: str) -> GatewayError:
    if source == Source.API:
        message = (
            f"Maximum content size limit ({limit}) exceeded ({size} bytes read). Larger files go through the job "
            "API: POST /v1/transcriptions returns a job id, GET /v1/transcriptions/{id} its result."
        )
    else:
        message = f"Maximum content size limit ({limit}) exceeded ({size} bytes read)."
    return GatewayError(413, message, code="request_too_large", param="file")


def _load(job_id: Any) -> tuple[TranscriptionJob, Transcript | None]:
    job = TranscriptionJob.objects.get(pk=job_id)
    return job, Transcript.objects.select_related("job").filter(job_id=job_id).first()


async def _wait(job: TranscriptionJob, timeout: float) -> tuple[TranscriptionJob, Transcript | None]:
    deadline = time.monotonic() + timeout
    step = 0
    while time.monotonic() < deadline:
        status = await adb(
            lambda: TranscriptionJob.objects.filter(pk=job.pk).values_list("status", flat=True).first()
        )
        if status is None:
            raise GatewayError(404, "The transcription job was deleted.", code="job_not_found")
        if status in (JobStatus.COMPLETED, JobStatus.FAILED):
            return await adb(_load, job.pk)
        await asyncio.sleep(POLL_SECONDS[min(step, len(POLL_SECONDS) - 1)])
        step += 1
    raise GatewayError(
        504,
        f"The transcription is still running; fetch it with GET /v1/transcriptions/{job.pk}.",
        code="timeout",
    )


def _failure(job: TranscriptionJob) -> GatewayError:
    if job.error_code in ("invalid_media", "cancelled"):
        return GatewayError(400, job.error, code=job.error_code, param="file")
    return GatewayError(500, job.error or "The transcription failed.", code=job.error_code or "engine_error")


async def _sync_endpoint(request: HttpRequest, *, task: str) -> HttpResponse:
    request_id = f"req_{uuid.uuid4().hex}"
    endpoint = "audio/translations" if task == Task.TRANSLATE else "audio/transcriptions"
    if request.method != "POST":
        return error_response(
            GatewayError(405, f"Method {request.method} not allowed.", code="method_not_allowed"), request_id
        )
    state = gateway_state()
    try:
        principal = await authenticate(state, _scope(request))
    except GatewayError as exc:
        return error_response(exc, request_id)
    try:
        job, submission = await _submit(
            request,
            state,
            principal,
            task=task,
            source=Source.API,
            max_bytes=settings.TRANSCRIPTION_SYNC_MAX_BYTES,
        )
    except GatewayError as exc:
        await state.buffer.put(_error_event(principal, endpoint, request_id, exc, _model_field(request)))
        return error_response(exc, request_id)
    try:
        job, transcript = await _wait(job, settings.TRANSCRIPTION_SYNC_TIMEOUT)
    except GatewayError as exc:
        return error_response(exc, job.request_id)
    if transcript is None:
        return error_response(_failure(job), job.request_id)
    body, content_type = formats.render(transcript, submission.response_format, submission.granularities)
    response = HttpResponse(body, content_type=content_type)
    response["x-request-id"] = job.request_id
    return response


@csrf_exempt
async def transcriptions(request: HttpRequest) -> HttpResponse:
    """POST /v1/audio/transcriptions (OpenAI's)."""
    return await _sync_endpoint(request, task=Task.TRANSCRIBE)


@csrf_exempt
async def translations(request: HttpRequest) -> HttpResponse:
    """POST /v1/audio/translations (OpenAI's): the speech translated to English."""
    return await _sync_endpoint(request, task=Task.TRANSLATE)


# --- the job API ---------------------------------------------------------------------------------


def job_object(job: TranscriptionJob, transcript: Transcript | None, fmt: str | None) -> dict[str, Any]:
    """A job as the job API shows it; the result in ``fmt`` once it is completed."""
    body: dict[str, Any] = {
        "id": str(job.id), "object": "transcription.job", "status": job.status, "progress": round(job.progress, 4),
        "model": job.model, "task": job.task, "language": job.language or None, "duration": job.duration,
        "created_at": int(job.created_at.timestamp()),
        "finished_at": int(job.finished_at.timestamp()) if job.finished_at else None,
        "expires_at": int(job.expires_at.timestamp()), "error": None,
    }  # fmt: skip
    if job.status == JobStatus.FAILED:
        body["error"] = {"message": job.error, "code": job.error_code}
    if transcript is not None and fmt is not None:
        granularities = ("word", "segment") if job.word_timestamps else ()
        body["response_format"] = fmt
        body["result"] = formats.as_object(transcript, fmt, granularities)
    return body


async def _principal(request: HttpRequest) -> tuple[GatewayState, Principal]:
    state = gateway_state()
    return state, await authenticate(state, _scope(request))


def _owned(principal: Principal) -> Any:
    return TranscriptionJob.objects.owned_by(user_id=principal.user_id, app_id=principal.app_id)


@csrf_exempt
async def jobs(request: HttpRequest) -> HttpResponse:
    """POST /v1/transcriptions: queue a job (any size up to TRANSCRIPTION_MAX_UPLOAD_BYTES); GET: my jobs."""
    request_id = f"req_{uuid.uuid4().hex}"
    try:
        state, principal = await _principal(request)
    except GatewayError as exc:
        return error_response(exc, request_id)
    if request.method == "GET":
        rows = await adb(lambda: [job_object(j, None, None) for j in _owned(principal)[:100]])
        return _json({"object": "list", "data": rows})
    if request.method != "POST":
        return error_response(
            GatewayError(405, f"Method {request.method} not allowed.", code="method_not_allowed"), request_id
        )
    try:
        job, _ = await _submit(
            request, state, principal, task=Task.TRANSCRIBE, source=Source.JOB_API,
            max_bytes=settings.TRANSCRIPTION_MAX_UPLOAD_BYTES,
        )  # fmt: skip
    except GatewayError as exc:
        await state.buffer.put(
            _error_event(principal, "transcriptions", request_id, exc, _model_field(request))
        )
        return error_response(exc, request_id)
    return _json(job_object(job, None, None), status=202, request_id=job.request_id)


@csrf_exempt
async def job_detail(request: HttpRequest, job_id: str) -> HttpResponse:
    """GET /v1/transcriptions/{id}[?response_format=…]: status, progress and result; DELETE removes it."""
    request_id = f"req_{uuid.uuid4().hex}"
    try:
        _, principal = await _principal(request)
        fmt = request.GET.get("response_format") or "json"
        if fmt not in formats.FORMATS:
            raise GatewayError(400, f"`response_format` must be one of {', '.join(formats.FORMATS)}.",
                               code="invalid_value", param="response_format")  # fmt: skip
        try:
            pk = uuid.UUID(job_id)
        except ValueError:
            pk = None
        job = await adb(lambda: _owned(principal).filter(pk=pk).first()) if pk else None
        if job is None:
            raise GatewayError(404, f"No transcription job `{job_id[:64]}`.", code="job_not_found")
        if request.method == "DELETE":
            await adb(job_delete, job=job)
            return _json({"id": str(job.pk), "object": "transcription.job.deleted", "deleted": True})
        if request.method != "GET":
            raise GatewayError(405, f"Method {request.method} not allowed.", code="method_not_allowed")
        transcript = await adb(lambda: Transcript.objects.select_related("job").filter(job_id=job.pk).first())
        return _json(job_object(job, transcript, fmt), request_id=job.request_id)
    except GatewayError as exc:
        return error_response(exc, request_id)


@csrf_exempt
async def unknown_route(request: HttpRequest, *args: Any) -> HttpResponse:
    """A 404 in OpenAI's format for the audio paths no view serves (as the gateway answers)."""
    error = GatewayError(404, f"Unknown route {request.method} {request.path[:200]}.", code="unknown_route")
    return error_response(error, f"req_{uuid.uuid4().hex}")
