"""Portal pages: upload recordings, follow the jobs, read, copy, download and delete transcripts.

Every lookup goes through `TranscriptionJob.objects.owned_by(user)`: another user's job is a 404.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST
from django.views.decorators.vary import vary_on_headers
from django_htmx.middleware import HtmxDetails

from config.db import adb
from gateway.catalog import principal_for_user
from gateway.errors import GatewayError
from transcription import formats
from transcription.api import gateway_state
from transcription.forms import default_model, submission_parse
from transcription.languages import LANGUAGES
from transcription.models import Source, Task, Transcript, TranscriptionJob
from transcription.services import job_delete, job_submit, models_for


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def _jobs(request: HttpRequest) -> list[TranscriptionJob]:
    return list(TranscriptionJob.objects.owned_by(user_id=request.user.pk).select_related("transcript")[:50])


def _job_or_404(request: HttpRequest, job_id: uuid.UUID) -> TranscriptionJob:
    job = TranscriptionJob.objects.owned_by(user_id=request.user.pk).filter(pk=job_id).first()
    if job is None:
        raise Http404("No such transcription.")
    return job


def _list_context(request: HttpRequest) -> dict[str, Any]:
    jobs = _jobs(request)
    return {"jobs": jobs, "any_active": any(job.is_active for job in jobs)}


@login_required
@require_GET
def index(request: HttpRequest) -> HttpResponse:
    """The upload form and my jobs."""
    context = _list_context(request)
    context.update({
        "languages": sorted(LANGUAGES.items(), key=lambda item: item[1]),
        "models": _portal_models(request.user.pk or 0),
        "default_model": default_model(),
        "tasks": Task.choices,
        "accept": ".wav,.mp3,.m4a,.ogg,.oga,.opus,.flac,.webm,.mp4,.mkv,.mov,.mpeg,.mpga,.aac,.avi,audio/*,video/*",
    })  # fmt: skip
    return render(request, "transcription/index.html", context)


def _portal_models(user_id: int) -> list[str]:
    from gateway.catalog import load_snapshot

    principal = principal_for_user(user_id)
    if principal is None:
        return []
    return models_for(snapshot=load_snapshot(), principal=principal) or [default_model()]


@login_required
@require_GET
@vary_on_headers("HX-Request")
def job_list(request: HttpRequest) -> HttpResponse:
    """The job list fragment, polled by htmx while a job is queued or running."""
    return render(request, "transcription/index.html#job-list", _list_context(request))


async def upload(request: HttpRequest) -> HttpResponse:
    """POST one or several files (XHR with progress, see transcription.js); one job per file.

    Each file is probed and admitted on its own: a refused one is reported, the others are queued.
    """
    # request.user through the sync path: social-auth's backends (Entra ID) have no aget_user.
    user = await sync_to_async(lambda: request.user)()
    authenticated = await sync_to_async(lambda: user.is_authenticated)()
    if not authenticated:
        return JsonResponse({"error": {"message": "Sign in first.", "code": "login_required"}}, status=401)
    if request.method != "POST":
        return JsonResponse({"error": {"message": "POST only.", "code": "method_not_allowed"}}, status=405)
    principal = await adb(principal_for_user, int(user.pk or 0))
    if principal is None:
        return JsonResponse(
            {"error": {"message": "Your account is inactive.", "code": "inactive"}}, status=403
        )
    state = gateway_state()
    try:
        data, files = await sync_to_async(lambda: (request.POST, request.FILES))()
        submission = submission_parse(
            data, task=Task.TRANSCRIBE, default_model=default_model(), task_field=True
        )
    except GatewayError as exc:
        return JsonResponse({"jobs": [], "errors": [{"file": "", "message": exc.message}]}, status=exc.status)
    except Exception as exc:  # a broken multipart body
        return JsonResponse(
            {"jobs": [], "errors": [{"file": "", "message": f"Bad upload: {exc}"}]}, status=400
        )
    uploads = files.getlist("file")
    if not uploads:
        return JsonResponse(
            {"jobs": [], "errors": [{"file": "", "message": "Choose at least one file."}]}, status=400
        )
    snapshot = await state.get_snapshot()
    created: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    status = 400
    for item in uploads:
        try:
            job = await job_submit(
                principal=principal, snapshot=snapshot, state=state, upload=item, request=submission.request,
                source=Source.PORTAL,
            )  # fmt: skip
        except GatewayError as exc:
            errors.append({"file": item.name, "message": exc.message, "code": exc.code})
            status = exc.status if not created else 200
            continue
        created.append({"id": str(job.pk), "file": job.original_name, "duration": job.duration})
        status = 200
    return JsonResponse({"jobs": created, "errors": errors}, status=status)


@login_required
@require_GET
def job_page(request: HtmxHttpRequest, job_id: uuid.UUID) -> HttpResponse:
    """One job: its progress while it runs, then the transcript with timestamps."""
    job = _job_or_404(request, job_id)
    transcript = Transcript.objects.filter(job=job).first()
    if request.htmx and request.GET.get("fragment") == "status":
        response = render(request, "transcription/job.html#job-status", {"job": job})
        if not job.is_active:
            response["HX-Refresh"] = "true"  # finished: reload the page to show the transcript
        return response
    return render(
        request,
        "transcription/job.html",
        {"job": job, "transcript": transcript, "downloads": formats.DOWNLOADS},
    )


@login_required
@require_GET
def download(request: HttpRequest, job_id: uuid.UUID, fmt: str) -> HttpResponse:
    """The transcript as txt, srt, vtt or json, as an attachment."""
    job = _job_or_404(request, job_id)
    transcript = Transcript.objects.select_related("job").filter(job=job).first()
    if transcript is None or fmt not in formats.DOWNLOADS:
        raise Http404("No transcript in that format.")
    openai_format, content_type = formats.DOWNLOADS[fmt]
    granularities = ("word", "segment") if job.word_timestamps else ()
    body, _ = formats.render(transcript, openai_format, granularities)
    response = HttpResponse(body, content_type=content_type)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", job.original_name.rsplit(".", 1)[0])[:80] or "transcript"
    response["Content-Disposition"] = f'attachment; filename="{stem}.{fmt}"'
    return response


@login_required
@require_POST
def delete(request: HtmxHttpRequest, job_id: uuid.UUID) -> HttpResponse:
    """Delete a job with its media and transcript (an unfinished one is cancelled)."""
    job_delete(job=_job_or_404(request, job_id))
    if request.htmx:
        if request.POST.get("from") == "list":
            return render(request, "transcription/index.html#job-list", _list_context(request))
        response = HttpResponse(status=204)
        response["HX-Redirect"] = "/transcription/"
        return response
    return redirect("transcription:index")
