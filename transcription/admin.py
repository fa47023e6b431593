"""Transcription jobs in the admin console (read-mostly: jobs are made by uploads)."""

from __future__ import annotations

from django.contrib import admin

from transcription.models import Transcript, TranscriptionJob


class TranscriptInline(admin.StackedInline):
    model = Transcript
    extra = 0
    can_delete = False
    readonly_fields = ("language", "duration", "text", "created_at")
    exclude = ("segments",)


@admin.register(TranscriptionJob)
class TranscriptionJobAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "user",
        "source",
        "status",
        "progress",
        "duration",
        "model",
        "attempts",
        "created_at",
    )
    list_filter = ("status", "source", "engine", "model")
    search_fields = ("id", "user__username", "original_name")
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in TranscriptionJob._meta.fields]
    inlines = [TranscriptInline]
