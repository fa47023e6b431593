from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from quotas.models import QuotaAlert, QuotaRule, UsageEvent
from quotas.reports import rule_current_usage


@admin.register(UsageEvent)
class UsageEventAdmin(admin.ModelAdmin):
    """The ledger is read-only: rows come from the gateway only."""

    list_display = [
        "created_at",
        "request_id",
        "model",
        "user",
        "key",
        "status",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
    ]
    list_filter = ["status", "model", "endpoint", "streamed"]
    search_fields = ["request_id", "model", "user__username"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(QuotaRule)
class QuotaRuleAdmin(admin.ModelAdmin):
    list_display = [
        "label",
        "subject_type",
        "metric",
        "window",
        "limit",
        "current_usage",
        "warn_at_percent",
        "enabled",
    ]
    list_filter = ["subject_type", "metric", "window", "enabled"]
    search_fields = ["name", "user__username", "group__name", "key__name"]
    autocomplete_fields = ["user", "group"]
    raw_id_fields = ["key"]

    @admin.display(description="used this window")
    def current_usage(self, obj: QuotaRule) -> str:
        try:
            used = rule_current_usage(obj)
        except Exception:  # the counter store may be down; the list must still load
            return "unavailable"
        share = used / float(obj.limit) * 100 if obj.limit else 100.0
        return f"{used:g} ({share:.0f}%)"


@admin.register(QuotaAlert)
class QuotaAlertAdmin(admin.ModelAdmin):
    list_display = ["created_at", "rule", "subject", "used", "limit", "window_ends_at", "notified_at"]
    list_filter = ["notified_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
