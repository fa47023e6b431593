"""Celery tasks of transcription: thin wrappers around services."""

from __future__ import annotations

import os
from typing import Any

from config.celery import app


# acks_late + reject_on_worker_lost: a worker killed mid-job puts the message back, and the retry
# runs the job again; `job_run` is idempotent by job id, so that yields one transcript, one charge.
# The time limits are set per job when it is queued (scaled to the audio's duration).
@app.task(name="transcription.run_job", acks_late=True, reject_on_worker_lost=True, ignore_result=False)
def run_job(job_id: str) -> dict[str, Any]:
    """Transcribe one job."""
    from transcription.engines import loads
    from transcription.services import job_run

    status = job_run(job_id=job_id)
    return {"job": job_id, "status": status, "pid": os.getpid(), "model_loads": loads()}


@app.task(name="transcription.purge_expired", ignore_result=True)
def purge_expired() -> int:
    """Delete the media and transcripts past TRANSCRIPTION_RETENTION_DAYS."""
    from transcription.services import jobs_purge

    return jobs_purge()
