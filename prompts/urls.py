from __future__ import annotations

from django.urls import path

from prompts import views

app_name = "prompts"

urlpatterns = [
    path("", views.prompt_list, name="list"),
    path("new/", views.prompt_create, name="create"),
    path("picker/", views.picker, name="picker"),
    path("from-playground/", views.from_playground, name="from_playground"),
    path("<uuid:pk>/", views.prompt_detail, name="detail"),
    path("<uuid:pk>/edit/", views.prompt_edit, name="edit"),
    path("<uuid:pk>/versions/", views.prompt_versions, name="versions"),
    path("<uuid:pk>/publish/", views.prompt_publish, name="publish"),
    path("<uuid:pk>/unpublish/", views.prompt_unpublish, name="unpublish"),
    path("<uuid:pk>/review/", views.prompt_request_review, name="review"),
    path("<uuid:pk>/rollback/", views.prompt_rollback, name="rollback"),
    path("<uuid:pk>/handover/", views.prompt_handover, name="handover"),
    path("<uuid:pk>/favorite/", views.prompt_favorite, name="favorite"),
    path("<uuid:pk>/use/", views.prompt_use, name="use"),
    path("<uuid:pk>/render/", views.prompt_render, name="render"),
    path("<uuid:pk>/playground.json", views.playground_json, name="playground_json"),
]
