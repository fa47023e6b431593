"""The app catalogue (/apps/): the portal's built-in apps and the registered LLM apps.

A registered app is seen only by the groups it is open to (none = everyone); any other user gets a
404 on its page and its icon. Icons are an uploaded raster image served from here (never an
external URL) or a short text such as an emoji.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.contrib import admin
from django.contrib.auth.decorators import login_required
from django.db.models import Case, Count, F, IntegerField, Q, QuerySet, Sum, Value, When
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET

from gateway.models import ApiKey
from portal.markdown import render as markdown
from portal.models import ICON_MAX_BYTES, App, icon_content_type
from quotas.models import UsageEvent


@dataclass(frozen=True)
class BuiltinApp:
    """An app that ships with the portal (always visible, always production)."""

    name: str
    slug: str
    url: str
    description: str
    icon_text: str
    category: str
    status: str = App.Status.PRODUCTION
    builtin: bool = True

    def get_status_display(self) -> str:
        return str(App.Status(self.status).label)


BUILTIN_APPS = (
    BuiltinApp("Chat", "chat", "/chat/", "Talk to the models your department may use.", "💬", "Assistants"),
    BuiltinApp(
        "Playground",
        "playground",
        "/playground/",
        "Compare models and parameters side by side.",
        "🧪",
        "Developer tools",
    ),  # fmt: skip
    BuiltinApp(
        "Transcription",
        "transcription",
        "/transcription/",
        "Turn recordings into text, on our own servers.",
        "🎙",
        "Speech",
    ),  # fmt: skip
    BuiltinApp(
        "Prompt library",
        "prompts",
        "/prompts/",
        "Share and reuse prompts; type / in the chat to use one.",
        "📚",
        "Assistants",
    ),  # fmt: skip
)


def _safe_link(url: str) -> str:
    # URLField also accepts ftp://: only web links are rendered as links.
    return url if url.lower().startswith(("https://", "http://", "/")) else ""


def _matches(app: Any, q: str, category: str, status: str) -> bool:
    if category and app.category != category:
        return False
    if status and app.status != status:
        return False
    return not q or q.lower() in f"{app.name} {app.description} {app.category}".lower()


@login_required
@require_GET
def catalogue(request: HttpRequest) -> HttpResponse:
    """Every app the user may see; filters by category and status, search; their departments' apps first."""
    q = request.GET.get("q", "").strip()[:100]
    category, status = request.GET.get("category", "")[:60], request.GET.get("status", "")
    if status not in App.Status.values:
        status = ""
    visible = App.objects.visible_to(request.user)
    groups = list(request.user.groups.values_list("id", flat=True))
    apps = visible.select_related("owner_group")
    if q:
        apps = apps.filter(Q(name__icontains=q) | Q(description__icontains=q) | Q(category__icontains=q))
    if category:
        apps = apps.filter(category=category)
    if status:
        apps = apps.filter(status=status)
    apps = apps.annotate(
        mine=Case(
            When(owner_group_id__in=groups, then=Value(1)), default=Value(0), output_field=IntegerField()
        )
    ).order_by("-mine", "name")
    registered = list(apps)
    builtins = [app for app in BUILTIN_APPS if _matches(app, q, category, status)]
    categories = sorted(
        set(visible.exclude(category="").values_list("category", flat=True))
        | {b.category for b in BUILTIN_APPS}
    )
    context = {
        "builtins": builtins, "mine": [a for a in registered if a.mine], "others": [a for a in registered if not a.mine],
        "q": q, "category": category, "status": status, "categories": categories, "statuses": App.Status.choices,
    }  # fmt: skip
    return render(request, "portal/catalogue.html", context)


@login_required
@require_GET
def app_detail(request: HttpRequest, slug: str) -> HttpResponse:
    """One registered app: a 404 for a user none of whose groups it is open to."""
    app = get_object_or_404(App.objects.visible_to(request.user).select_related("owner_group"), slug=slug)
    context = {"app": app, "url": _safe_link(app.url), "docs_url": _safe_link(app.docs_url),
               # Sanitised markdown (portal.markdown: no raw HTML, no script, no external images).
               "description_html": mark_safe(markdown(app.description))}  # noqa: S308  # fmt: skip
    return render(request, "portal/catalogue_detail.html", context)


@login_required
@require_GET
def app_icon(request: HttpRequest, slug: str) -> HttpResponse:
    """The app's uploaded icon, with the type its bytes say (never the uploader's) and no sniffing."""
    app = get_object_or_404(App.objects.visible_to(request.user), slug=slug)
    if not app.icon_image:
        raise Http404
    try:
        with app.icon_image.open("rb") as handle:
            data = handle.read(ICON_MAX_BYTES + 1)  # icons are small (validate_icon): no streaming needed
    except OSError:
        raise Http404 from None
    content_type = icon_content_type(data[:16])
    if content_type is None:
        raise Http404
    response = HttpResponse(data, content_type=content_type)
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'"
    response["Cache-Control"] = "private, max-age=3600"
    return response


# --- the admin console -------------------------------------------------------------------------------
class AppKeyInline(admin.TabularInline):
    """The app's service keys, read-only: keys are issued (and their secret shown once) from the keys page."""

    model = ApiKey
    fk_name = "app"
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ("name", "hint", "created_at", "expires_at", "revoked_at", "last_used_at")
    readonly_fields = ("name", "hint", "created_at", "expires_at", "revoked_at", "last_used_at")
    verbose_name_plural = "service keys (issue them on the API keys page, or manage.py issue_key --app SLUG)"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def app_usage_this_month(app: App) -> dict[str, Any]:
    """Requests, tokens and cost of ``app``'s calls this month, from the ledger."""
    totals = (
        UsageEvent.objects.filter(app=app, counted=True)
        .this_month()
        .aggregate(
            requests=Count("id"),
            tokens=Sum(F("prompt_tokens") + F("completion_tokens")),
            cost=Sum("cost_usd"),
        )
    )
    return {
        "requests": totals["requests"] or 0,
        "tokens": totals["tokens"] or 0,
        "cost": totals["cost"] or Decimal(0),
    }


class AppAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "status", "category", "owner_group", "visible_to", "entra_app_id"]
    list_filter = ["status", "category", "owner_group"]
    prepopulated_fields = {"slug": ["name"]}
    search_fields = ["name", "slug", "description", "entra_app_id"]
    filter_horizontal = ["visible_to_groups"]
    readonly_fields = ["usage_this_month", "created_at"]
    inlines = [AppKeyInline]
    fieldsets = [
        (None, {"fields": ["name", "slug", "description", "category", "status", "owner_group"]}),
        ("Links and icon", {"fields": ["url", "docs_url", "icon_image", "icon_text"]}),
        ("Who sees it", {"fields": ["visible_to_groups"]}),
        ("API", {"fields": ["entra_app_id", "usage_this_month", "created_at"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[App]:
        return (
            super().get_queryset(request).select_related("owner_group").prefetch_related("visible_to_groups")
        )

    @admin.display(description="visible to")
    def visible_to(self, obj: App) -> str:
        return ", ".join(g.name for g in obj.visible_to_groups.all()) or "everyone"

    @admin.display(description="usage this month")
    def usage_this_month(self, obj: App) -> str:
        if obj.pk is None:
            return "—"
        usage = app_usage_this_month(obj)
        return f"{usage['requests']} requests, {usage['tokens']} tokens, ${usage['cost']:.4f}"
