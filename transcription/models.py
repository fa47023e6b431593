"""Transcription jobs and their transcripts."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone


def media_path(job: TranscriptionJob, filename: str) -> str:
    """A generated name: the client's file name never reaches the file system."""
    return f"transcription/{job.created_at:%Y/%m}/{job.id.hex}.media"


class JobStatus(models.TextChoices):
    QUEUED = "queued", "queued"
    RUNNING = "running", "running"
    COMPLETED = "completed", "completed"
    FAILED = "failed", "failed"


class Task(models.TextChoices):
    TRANSCRIBE = "transcribe", "transcribe"
    TRANSLATE = "translate", "translate to English"


class Source(models.TextChoices):
    PORTAL = "portal", "portal"
    API = "api", "API (synchronous)"
    JOB_API = "job_api", "job API"


class TranscriptionJobQuerySet(models.QuerySet["TranscriptionJob"]):
    def visible(self) -> TranscriptionJobQuerySet:
        """Not past retention (the purge deletes those; until then nobody sees them)."""
        return self.filter(expires_at__gt=timezone.now())

    def owned_by(self, *, user_id: int | None, app_id: int | None = None) -> TranscriptionJobQuerySet:
        """The jobs of one user (any of their keys, or the portal), or of one app's service keys."""
        if user_id is not None:
            return self.visible().filter(user_id=user_id)
        return self.visible().filter(user__isnull=True, app_id=app_id) if app_id else self.none()

    def active(self) -> TranscriptionJobQuerySet:
        return self.filter(status__in=[JobStatus.QUEUED, JobStatus.RUNNING])


class TranscriptionJob(models.Model):
    """One recording to transcribe: admitted (quota reserved) before it is queued, charged once when done."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="transcription_jobs",
    )
    key = models.ForeignKey(
        "gateway.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    app = models.ForeignKey("portal.App", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    group_ids = models.JSONField(default=list, blank=True, help_text="The caller's groups at submission")
    source = models.CharField(max_length=8, choices=Source.choices)
    status = models.CharField(
        max_length=10, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=True
    )
    progress = models.FloatField(default=0.0, help_text="Share of the audio done, 0..1")
    error = models.TextField(blank=True)
    error_code = models.CharField(max_length=48, blank=True)

    media = models.FileField(upload_to=media_path, max_length=200, blank=True)
    original_name = models.CharField(
        max_length=200, blank=True, help_text="Shown to the owner only; never a path"
    )
    size_bytes = models.BigIntegerField(default=0)
    format_name = models.CharField(max_length=64, blank=True)
    duration = models.FloatField(default=0.0, help_text="Seconds, as probed before queueing")

    model = models.CharField(max_length=128, help_text="The public model name asked for")
    engine = models.CharField(max_length=32)
    engine_model = models.CharField(max_length=300)
    language = models.CharField(max_length=8, blank=True, help_text="Empty = detect")
    task = models.CharField(max_length=10, choices=Task.choices, default=Task.TRANSCRIBE)
    prompt = models.TextField(blank=True)
    temperature = models.FloatField(default=0.0)
    word_timestamps = models.BooleanField(default=False)
    price_per_second = models.DecimalField(max_digits=12, decimal_places=8, default=0)

    reservation = models.JSONField(default=dict, blank=True, help_text="Quota counters reserved at admission")
    attempts = models.PositiveSmallIntegerField(default=0)
    worker_pid = models.IntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    deadline_at = models.DateTimeField(null=True, blank=True, help_text="Past this a running job is given up")
    expires_at = models.DateTimeField(db_index=True, help_text="Media and transcript are deleted after this")

    objects = TranscriptionJobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "created_at"])]

    def __str__(self) -> str:
        return f"{self.id} {self.status}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.expires_at is None:
            self.expires_at = self.created_at + timedelta(days=settings.TRANSCRIPTION_RETENTION_DAYS)
        super().save(*args, **kwargs)

    @property
    def request_id(self) -> str:
        """The ledger's request id of this job: one charge per job, whatever the retries."""
        return f"job_{self.id.hex}"

    @property
    def endpoint(self) -> str:
        return "audio/translations" if self.task == Task.TRANSLATE else "audio/transcriptions"

    @property
    def is_active(self) -> bool:
        return self.status in (JobStatus.QUEUED, JobStatus.RUNNING)

    @property
    def percent(self) -> int:
        return int(round(self.progress * 100))

    def time_limits(self) -> tuple[int, int]:
        """(soft, hard) Celery time limits scaled to the audio's duration."""
        soft = (
            settings.TRANSCRIPTION_TIME_LIMIT_BASE
            + self.duration * settings.TRANSCRIPTION_TIME_LIMIT_PER_AUDIO_SECOND
        )
        return int(soft), int(soft) + 30


class Transcript(models.Model):
    """The result of one job: exactly one per job (the primary key is the job's)."""

    job = models.OneToOneField(
        TranscriptionJob, primary_key=True, on_delete=models.CASCADE, related_name="transcript"
    )
    language = models.CharField(max_length=8)
    duration = models.FloatField(help_text="Seconds of audio decoded and charged")
    text = models.TextField()
    segments = models.JSONField(default=list)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"transcript of {self.job_id}"
