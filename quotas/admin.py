from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from quotas.models import UsageEvent


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
