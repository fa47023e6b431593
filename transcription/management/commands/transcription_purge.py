"""Delete transcription media and transcripts past TRANSCRIPTION_RETENTION_DAYS (schedule it daily)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Delete transcription jobs past retention with their media; requeue jobs whose worker died."

    def handle(self, *args: Any, **options: Any) -> None:
        from transcription.services import jobs_purge

        self.stdout.write(f"deleted {jobs_purge()} expired transcription jobs")
