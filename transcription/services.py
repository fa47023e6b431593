"""Transcription workflows: submit (probe, admit, queue) in the web process; run, finish, fail in the worker.

Accounting, exactly once:

- **Admission** happens in the web process before anything is queued: the probed duration is the
  demand (audio seconds, one request, its cost), reserved atomically like a chat request's tokens.
  A refusal is a 429 and nothing is queued. The reserved counters are stored on the job row.
- **Settlement** happens in the worker, in the same database transaction that stores the one
  transcript and moves the job to `completed` (or `failed`): the ledger row is written there with
  the job's deterministic request id (`job_<uuid>`, unique), and on the embedded backend the
  counters are settled in that transaction too. A retried attempt finds the job finished and does
  nothing, so a worker killed at any point yields one transcript and one charge. With Redis the
  counters are settled right after the commit by the attempt that committed; a crash in between
  leaves the reservation (the probed duration, ≈ the charge) in place, never a double settlement.
- A failed or deleted job releases its reservation (it keeps its one request, like a failed chat).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.utils import timezone

from config import metrics
from config.db import adb
from gateway.catalog import ModelInfo, Principal, Snapshot
from gateway.errors import GatewayError
from quotas import engine as quota_engine
from quotas.engine import Counter, Demand, Reservation, RuleInfo
from quotas.ledger import events_write
from quotas.services import actual_of, usage_admit
from transcription.engines import EngineError, Options, Result, decode, get_engine
from transcription.models import JobStatus, Task, Transcript, TranscriptionJob, media_path
from transcription.probe import MediaError, MediaInfo, probe

logger = logging.getLogger(__name__)

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
PROGRESS_EVERY = 0.5  # seconds between progress writes


@dataclass(frozen=True, slots=True)
class SpeechModel:
    """A public model name resolved to a local engine and model, with its catalogue price."""

    name: str
    engine: str
    engine_model: str
    price_per_second: Decimal
    info: ModelInfo | None = None


@dataclass(frozen=True, slots=True)
class JobRequest:
    """What one submission asks for, validated."""

    model: str
    language: str = ""
    task: str = Task.TRANSCRIBE
    prompt: str = ""
    temperature: float = 0.0
    word_timestamps: bool = False


def speech_models() -> dict[str, tuple[str, str]]:
    """Public name → (engine, model), from TRANSCRIPTION_MODELS."""
    out = {}
    for name, target in settings.TRANSCRIPTION_MODELS.items():
        engine, _, model = target.partition(":")
        out[name.strip()] = (engine.strip(), model.strip())
    return out


def speech_model_resolve(*, snapshot: Snapshot, principal: Principal, name: str) -> SpeechModel:
    """The local engine behind ``name``: 404 unknown, 403 not allowed for this caller.

    A catalogue model of the same name adds its price (per audio second) and its group restriction.
    """
    if not name:
        raise GatewayError(400, "You must provide a model parameter.", code="missing_model", param="model")
    target = speech_models().get(name)
    if target is None:
        raise GatewayError(
            404, f"The model `{name[:100]}` does not exist or you do not have access to it.", code="model_not_found",
            param="model",
        )  # fmt: skip
    info = snapshot.models.get(name)
    allowed = (
        principal.may_use(info)
        if info is not None
        else not principal.allowed_models or name in principal.allowed_models
    )
    if not allowed:
        raise GatewayError(
            403, f"You are not allowed to use the model `{name}`.", code="model_not_allowed", param="model"
        )
    price = info.per_audio_second if info is not None else Decimal(0)
    return SpeechModel(name=name, engine=target[0], engine_model=target[1], price_per_second=price, info=info)


def models_for(*, snapshot: Snapshot, principal: Principal) -> list[str]:
    """The public speech model names ``principal`` may use (the portal's model menu)."""
    out = []
    for name in speech_models():
        try:
            speech_model_resolve(snapshot=snapshot, principal=principal, name=name)
        except GatewayError:
            continue
        out.append(name)
    return out


# --- submission (web process) ----------------------------------------------------------------------


def _store(job_id: Any, created_at: Any, upload: UploadedFile) -> Path:
    """Write ``upload`` under MEDIA_ROOT with the job's generated name; return the path."""
    stub = TranscriptionJob(id=job_id, created_at=created_at)
    path = Path(settings.MEDIA_ROOT) / media_path(stub, "")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as out:
        for chunk in upload.chunks():
            out.write(chunk)
    partial.replace(path)
    return path


def _probe_or_400(path: Path) -> MediaInfo:
    try:
        return probe(path)
    except MediaError as exc:
        path.unlink(missing_ok=True)
        raise GatewayError(400, exc.message, code=exc.code, param="file") from None


def _serialize_reservation(reservation: Reservation) -> dict[str, Any]:
    counters = []
    for c in reservation.counters:
        rule = asdict(c.rule)
        rule["model_names"] = sorted(rule["model_names"])
        counters.append(
            {"rule": rule, "subject": c.subject, "bucket": c.bucket, "end": c.end, "reserved": c.reserved}
        )
    return {"counters": counters, "alerts": reservation.alerts}


def _counters(data: dict[str, Any]) -> list[Counter]:
    out = []
    for item in data.get("counters") or ():
        rule = dict(item["rule"])
        rule["model_names"] = frozenset(rule["model_names"])
        out.append(Counter(rule=RuleInfo(**rule), subject=item["subject"], bucket=item["bucket"], end=item["end"],
                           reserved=float(item["reserved"])))  # fmt: skip
    return out


def _safe_name(name: str | None) -> str:
    """The client's file name, for display only: no directories, no control characters."""
    base = os.path.basename((name or "").replace("\\", "/"))
    return "".join(ch for ch in base if ch.isprintable())[:200] or "recording"


async def job_submit(
    *, principal: Principal, snapshot: Snapshot, state: Any, upload: UploadedFile, request: JobRequest,
    source: str, key_id: int | None = None,
) -> TranscriptionJob:  # fmt: skip
    """Store, probe, admit and queue one upload; raise GatewayError (400/403/404/413/429) otherwise.

    Nothing is queued unless the quotas admitted the probed duration.
    """
    import uuid

    if upload.size is not None and upload.size > settings.TRANSCRIPTION_MAX_UPLOAD_BYTES:
        raise GatewayError(413, f"The file is larger than {settings.TRANSCRIPTION_MAX_UPLOAD_BYTES} bytes.",
                           code="request_too_large", param="file")  # fmt: skip
    model = speech_model_resolve(snapshot=snapshot, principal=principal, name=request.model)
    job_id, created_at = uuid.uuid4(), timezone.now()
    path = await adb(_store, job_id, created_at, upload)
    info = await adb(_probe_or_400, path)
    reservation = Reservation()
    if snapshot.rules:
        demand = Demand(
            requests=1,
            audio_seconds=info.duration,
            cost_usd=float(Decimal(repr(info.duration)) * model.price_per_second),
        )
        try:
            reservation = await usage_admit(
                state=state, rules=snapshot.rules, principal=principal, model=model.name, demand=demand
            )
        except GatewayError:
            path.unlink(missing_ok=True)
            raise
    job = TranscriptionJob(
        id=job_id, created_at=created_at, user_id=principal.user_id, key_id=key_id or principal.key_id,
        app_id=principal.app_id, group_ids=sorted(principal.group_ids), source=source,
        original_name=_safe_name(upload.name), size_bytes=info.size, format_name=info.format_name[:64],
        duration=info.duration, model=model.name, engine=model.engine, engine_model=model.engine_model,
        language=request.language, task=request.task, prompt=request.prompt, temperature=request.temperature,
        word_timestamps=request.word_timestamps, price_per_second=model.price_per_second,
        reservation=_serialize_reservation(reservation),
    )  # fmt: skip
    job.media.name = str(path.relative_to(settings.MEDIA_ROOT))
    try:
        await adb(_job_create, job)
    except GatewayError:
        path.unlink(missing_ok=True)
        raise
    except Exception:
        path.unlink(missing_ok=True)
        await adb(_release, job)
        raise
    return job


def _job_create(job: TranscriptionJob) -> None:
    """Save the job, then queue it; if the broker refuses, undo both (no job, no reservation)."""
    job.save(force_insert=True)
    try:
        job_enqueue(job=job)
    except Exception:
        logger.exception("could not queue transcription job %s", job.pk)
        _release(job)
        job.delete()
        raise GatewayError(
            503, "The transcription queue is unavailable; try again shortly.", code="queue_unavailable"
        ) from None


def job_enqueue(*, job: TranscriptionJob) -> None:
    """Queue ``job`` on the transcription queue with time limits scaled to its audio's duration."""
    from transcription.tasks import run_job

    soft, hard = job.time_limits()
    run_job.apply_async(
        args=(str(job.id),),
        task_id=job.request_id,
        queue="transcription",
        soft_time_limit=soft,
        time_limit=hard,
    )


# --- running (worker) ------------------------------------------------------------------------------


def _claim(job_id: str) -> TranscriptionJob | None:
    """Mark the job running for this attempt; None when it is finished or gone (a duplicate delivery)."""
    now = timezone.now()
    with transaction.atomic():
        job = TranscriptionJob.objects.select_for_update().filter(pk=job_id).first()
        if job is None or not job.is_active:
            return None
        _, hard = job.time_limits()
        job.status, job.attempts, job.worker_pid = JobStatus.RUNNING, job.attempts + 1, os.getpid()
        job.started_at, job.deadline_at, job.progress = now, now + timedelta(seconds=hard), 0.0
        job.save(update_fields=["status", "attempts", "worker_pid", "started_at", "deadline_at", "progress"])
        return job


def job_run(*, job_id: str) -> str:
    """Transcribe one job (the Celery task's body); return its final status. Idempotent by job id."""
    from celery.exceptions import SoftTimeLimitExceeded

    job = _claim(job_id)
    if job is None:
        return "skipped"
    if job.attempts > settings.TRANSCRIPTION_MAX_ATTEMPTS:
        job_fail(job=job, message=f"The transcription was interrupted {job.attempts - 1} times; it is given up.",
                 code="worker_lost")  # fmt: skip
        return JobStatus.FAILED
    last = [0.0]

    def progress(share: float) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY:
            last[0] = now
            TranscriptionJob.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(
                progress=round(share, 4)
            )

    try:
        engine = get_engine(job.engine, job.engine_model)
    except Exception as exc:  # a missing model or engine: the deployment's fault, not the file's
        logger.exception("transcription engine %s:%s unavailable", job.engine, job.engine_model)
        job_fail(job=job, message=f"The transcription engine is unavailable: {exc}", code="engine_error")
        return JobStatus.FAILED
    try:
        limit = min(settings.TRANSCRIPTION_MAX_DURATION, job.duration * 2 + 60)
        audio = decode(job.media.path, limit)
        options = Options(language=job.language or None, task=job.task, prompt=job.prompt or None,
                          temperature=job.temperature, word_timestamps=job.word_timestamps)  # fmt: skip
        result = engine.transcribe(audio, options, progress)
    except EngineError as exc:
        job_fail(job=job, message=str(exc), code="invalid_media")
        return JobStatus.FAILED
    except SoftTimeLimitExceeded:
        job_fail(job=job, message="The transcription took longer than its time limit.", code="time_limit")
        return JobStatus.FAILED
    except Exception as exc:
        logger.exception("transcription job %s failed", job.pk)
        job_fail(job=job, message=f"The transcription failed ({type(exc).__name__}).", code="engine_error")
        return JobStatus.FAILED
    return JobStatus.COMPLETED if job_complete(job=job, result=result) else "skipped"


def _event(job: TranscriptionJob, *, status: int, error_kind: str, seconds: float) -> dict[str, Any]:
    cost = (Decimal(repr(round(seconds, 3))) * job.price_per_second).quantize(Decimal("0.0000000001"))
    return {
        "request_id": job.request_id, "ts": time.time(), "key_id": job.key_id, "user_id": job.user_id,
        "group_ids": list(job.group_ids or []), "app_id": job.app_id, "endpoint": job.endpoint, "provider": "local",
        "deployment": f"{job.engine}/{job.engine_model}"[:200], "model": job.model, "prompt_tokens": 0,
        "completion_tokens": 0, "cached_tokens": 0, "images": 0, "audio_seconds": f"{seconds:.3f}",
        "cost_usd": str(cost), "latency_ms": max(0, int((timezone.now() - job.created_at).total_seconds() * 1000)),
        "ttft_ms": None, "status": status, "error_kind": error_kind, "streamed": False, "tokens_estimated": False,
        "counted": True,
    }  # fmt: skip


Pending = tuple[list[tuple[Counter, float]], list[dict[str, Any]]]


def _settle(
    job: TranscriptionJob, *, status: int, error_kind: str, seconds: float, write_event: bool = True
) -> Pending:
    """Write the ledger row and, on the embedded backend, settle the counters (inside the caller's
    transaction); return what is left for after the commit: Redis deltas, soft-limit alerts."""
    event = _event(job, status=status, error_kind=error_kind, seconds=seconds)
    counters = _counters(job.reservation or {})
    deltas = [(c, actual_of(c.rule.metric, event) - c.reserved) for c in counters]
    deltas = [(c, d) for c, d in deltas if abs(d) > quota_engine.EPSILON]
    alerts = list((job.reservation or {}).get("alerts") or []) if write_event else []
    if write_event:
        events_write(events=[event])
    if deltas and not settings.REDIS_URL:
        quota_engine.db_settle(deltas)
        deltas = []
    return deltas, alerts


def _release(job: TranscriptionJob) -> None:
    """Give back the reservation of a job that was never queued (no ledger row: nothing ran)."""
    _redis_settle(_settle(job, status=500, error_kind="not_queued", seconds=0.0, write_event=False)[0])


def _redis_settle(deltas: list[tuple[Counter, float]]) -> None:
    """Apply counter deltas on Redis (sync: the worker has no event loop)."""
    if not deltas or not settings.REDIS_URL:
        return
    import redis

    from quotas.buffer import REDIS_LIST

    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
        args: list[Any] = []
        for c, delta in deltas:
            args += [repr(delta), c.ttl]
        client.eval(
            quota_engine.SETTLE_LUA, len(deltas) + 1, *[c.redis_key for c, _ in deltas], REDIS_LIST, *args
        )
        client.close()
    except Exception:
        # The ledger row is written; `quotas_rebuild` recomputes the counters from it.
        logger.exception("Redis unreachable: quota counters of a transcription job not settled")


def _finish(job_id: Any, *, apply: Any) -> bool:
    """Run ``apply(job)`` on the locked job if it is still active; settle on Redis after the commit."""
    with transaction.atomic():
        job = TranscriptionJob.objects.select_for_update().filter(pk=job_id).first()
        if job is None or not job.is_active:
            return False  # finished by an earlier attempt, or deleted meanwhile
        deltas, alerts = apply(job)
    _redis_settle(deltas)
    if alerts:  # after the commit: their notification task must find the rows
        try:
            events_write(events=alerts)
        except Exception:
            logger.exception("soft-limit alerts of a transcription job not recorded")
    return True


def job_complete(*, job: TranscriptionJob, result: Result) -> bool:
    """Store the transcript and charge the audio seconds, once; False if another attempt finished first."""
    seconds = round(result.duration, 3)

    def apply(locked: TranscriptionJob) -> Pending:
        Transcript.objects.create(job=locked, language=result.language, duration=seconds, text=result.text,
                                  segments=result.segments_json())  # fmt: skip
        locked.status, locked.progress, locked.finished_at = JobStatus.COMPLETED, 1.0, timezone.now()
        locked.save(update_fields=["status", "progress", "finished_at"])
        return _settle(locked, status=200, error_kind="", seconds=seconds)

    done = _finish(job.pk, apply=apply)
    if done:
        metrics.transcription_finished(job=job, audio_seconds=seconds)
        _purge_soon()
    return done


def job_fail(*, job: TranscriptionJob, message: str, code: str) -> bool:
    """Fail ``job`` with ``message`` and release its reservation, once."""

    def apply(locked: TranscriptionJob) -> Pending:
        locked.status, locked.error, locked.error_code = JobStatus.FAILED, message[:2000], code
        locked.finished_at = timezone.now()
        locked.save(update_fields=["status", "error", "error_code", "finished_at"])
        status = 500 if code in ("engine_error", "worker_lost", "time_limit") else 400
        return _settle(locked, status=status, error_kind=code, seconds=0.0)

    return _finish(job.pk, apply=apply)


def job_delete(*, job: TranscriptionJob) -> None:
    """Delete a job, its media and its transcript; an unfinished one is cancelled (reservation released)."""
    if job.is_active:
        job_fail(job=job, message="Cancelled by its owner.", code="cancelled")
    storage, name = job.media.storage, job.media.name
    job.delete()
    if name:
        storage.delete(name)


def _purge_soon() -> None:
    """Queue a retention purge at most once an hour per process (beat may run it too)."""
    global _last_purge
    now = time.monotonic()
    if now - _last_purge < 3600:
        return
    _last_purge = now
    try:
        from transcription.tasks import purge_expired

        purge_expired.apply_async(queue="maintenance")
    except Exception:
        logger.exception("could not queue the transcription purge")


_last_purge = -1e9


def jobs_recover() -> int:
    """Requeue running jobs past their deadline (their worker died without the broker noticing, e.g.
    the filesystem broker, which forgets a message once delivered); give up after the last attempt."""
    count = 0
    for job in TranscriptionJob.objects.filter(status=JobStatus.RUNNING, deadline_at__lt=timezone.now()):
        if job.attempts >= settings.TRANSCRIPTION_MAX_ATTEMPTS:
            job_fail(job=job, message="The worker running this job stopped answering.", code="worker_lost")
        elif TranscriptionJob.objects.filter(
            pk=job.pk, status=JobStatus.RUNNING, deadline_at=job.deadline_at
        ).update(status=JobStatus.QUEUED, progress=0.0):
            job_enqueue(job=job)
            count += 1
    return count


def jobs_purge() -> int:
    """Delete jobs past retention with their media (the ledger keeps their charge); recover stuck ones."""
    jobs_recover()
    count = 0
    for job in TranscriptionJob.objects.filter(expires_at__lte=timezone.now()).iterator():
        job_delete(job=job)
        count += 1
    return count
