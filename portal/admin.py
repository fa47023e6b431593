from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from portal import identity_admin  # noqa: F401 (users, groups, Entra ID mapping, audit log)
from portal.catalogue import AppAdmin
from portal.models import App, Conversation

# The catalogue's admin (fields, service keys, usage this month) lives with the catalogue.
admin.site.register(App, AppAdmin)


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    """Metadata and usage only, read-only: what employees wrote stays private to them.

    Messages are not in the console at all; an admin may delete a conversation (a leaver's data,
    an erasure request), and its usage stays in the ledger.
    """

    list_display = ["title", "owner", "model", "pinned", "updated_at", "prompt_tokens", "completion_tokens",
                    "cost_usd"]  # fmt: skip
    list_filter = ["pinned", "model"]
    search_fields = ["owner__username"]
    fields = ("owner", "model", "pinned", "created_at", "updated_at", "prompt_tokens", "completion_tokens",
              "cost_usd")  # fmt: skip
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Conversation | None = None) -> bool:
        return False
