"""Portal pages under /transcription/ and the OpenAI-compatible API under /v1/ (see api.py)."""

from __future__ import annotations

from django.urls import path, re_path

from transcription import api, views

app_name = "transcription"

urlpatterns = [
    path("transcription/", views.index, name="index"),
    path("transcription/jobs/", views.job_list, name="jobs"),
    path("transcription/upload", views.upload, name="upload"),
    path("transcription/jobs/<uuid:job_id>/", views.job_page, name="job"),
    path("transcription/jobs/<uuid:job_id>/download.<str:fmt>", views.download, name="download"),
    path("transcription/jobs/<uuid:job_id>/delete", views.delete, name="delete"),
    path("v1/audio/transcriptions", api.transcriptions, name="api_transcriptions"),
    path("v1/audio/translations", api.translations, name="api_translations"),
    path("v1/transcriptions", api.jobs, name="api_jobs"),
    path("v1/transcriptions/<str:job_id>", api.job_detail, name="api_job"),
    # Everything else under the paths the gateway hands to Django: the gateway's JSON 404.
    re_path(r"^v1/(audio/.*|transcriptions/.+/.*)$", api.unknown_route),
]
