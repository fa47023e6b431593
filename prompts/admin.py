"""The prompt library in the admin console: prompts with their versions, editors, favourites,
JSON export (an action) and import (a page linked from the prompts list)."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import URLPattern, path

from prompts import services
from prompts.models import Prompt, PromptEditor, PromptFavorite, PromptVersion


class PromptVersionInline(admin.TabularInline):
    model = PromptVersion
    extra = 0
    fields = ("number", "message", "author", "created_at", "model")
    readonly_fields = ("number", "message", "author", "created_at", "model")
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # versions are written by saving the prompt in the portal (one per change)


class ImportForm(forms.Form):
    file = forms.FileField(help_text="A file written by manage.py prompts_export or the export action")


@admin.register(Prompt)
class PromptAdmin(admin.ModelAdmin):
    list_display = ["title", "scope", "departments", "owner", "published", "review_requested_at", "use_count",
                    "updated_at"]  # fmt: skip
    list_filter = ["scope", "archived", "category", "groups"]
    search_fields = ["title", "description", "tags", "uuid"]
    filter_horizontal = ["groups"]
    raw_id_fields = ["owner", "review_requested_by"]
    readonly_fields = ["uuid", "use_count", "created_at", "updated_at"]
    inlines = [PromptVersionInline]
    actions = ["export_json", "publish_latest"]
    change_list_template = "admin/prompts/prompt/change_list.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Prompt]:
        return (
            super()
            .get_queryset(request)
            .select_related("owner", "published_version")
            .prefetch_related("groups")
        )

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "published_version":
            # Only this prompt's own versions can be published.
            object_id = request.resolver_match.kwargs.get("object_id") if request.resolver_match else None
            kwargs["queryset"] = PromptVersion.objects.filter(prompt__pk=object_id or 0)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.display(description="departments")
    def departments(self, obj: Prompt) -> str:
        return ", ".join(g.name for g in obj.groups.all())

    @admin.display(description="published")
    def published(self, obj: Prompt) -> str:
        return f"v{obj.published_version.number}" if obj.published_version else "draft"

    @admin.action(description="Export the selected prompts as JSON")
    def export_json(self, request: HttpRequest, queryset: QuerySet[Prompt]) -> HttpResponse:
        body = json.dumps(services.prompts_export(prompts=queryset), indent=2, ensure_ascii=False)
        response = HttpResponse(body, content_type="application/json")
        response["Content-Disposition"] = 'attachment; filename="prompts.json"'
        return response

    @admin.action(description="Publish the latest version of the selected prompts")
    def publish_latest(self, request: HttpRequest, queryset: QuerySet[Prompt]) -> None:
        done = 0
        for prompt in queryset:
            if prompt.publishable_by(request.user):
                services.prompt_publish(prompt=prompt, actor=request.user)
                done += 1
        self.message_user(request, f"Published {done} of {queryset.count()} prompt(s).")

    def get_urls(self) -> list[URLPattern]:
        extra = [path("import/", self.admin_site.admin_view(self.import_view), name="prompts_prompt_import")]
        return extra + super().get_urls()

    def import_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_add_permission(request) or not self.has_change_permission(request):
            return redirect("admin:prompts_prompt_changelist")
        form = ImportForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            try:
                data = json.loads(form.cleaned_data["file"].read().decode("utf-8"))
                counts = services.prompts_import(data=data, actor=request.user)
            except (ValueError, KeyError, TypeError, ValidationError) as exc:
                messages.error(request, f"Not imported: {exc}")
            else:
                messages.success(
                    request,
                    "Imported: {created} created, {updated} updated, {versions} versions added.".format(
                        **counts
                    ),
                )
                return redirect("admin:prompts_prompt_changelist")
        context = {**self.admin_site.each_context(request), "form": form, "opts": self.model._meta,
                   "title": "Import prompts"}  # fmt: skip
        return render(request, "admin/prompts/prompt/import.html", context)


@admin.register(PromptVersion)
class PromptVersionAdmin(admin.ModelAdmin):
    list_display = ["prompt", "number", "author", "message", "model", "created_at"]
    list_filter = ["created_at"]
    search_fields = ["prompt__title", "message", "system", "user_template"]
    raw_id_fields = ["prompt", "author"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # A version is history: once written it is never changed.
        return [f.name for f in PromptVersion._meta.fields] if obj is not None else []


@admin.register(PromptEditor)
class PromptEditorAdmin(admin.ModelAdmin):
    list_display = ["group", "user", "created_at"]
    list_filter = ["group"]
    search_fields = ["user__username", "group__name"]
    raw_id_fields = ["user"]


@admin.register(PromptFavorite)
class PromptFavoriteAdmin(admin.ModelAdmin):
    list_display = ["user", "prompt", "created_at"]
    search_fields = ["user__username", "prompt__title"]
    raw_id_fields = ["user", "prompt"]
