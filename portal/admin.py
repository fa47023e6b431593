from __future__ import annotations

from django.contrib import admin

from portal import identity_admin  # noqa: F401 (users, groups, Entra ID mapping, audit log)
from portal.catalogue import AppAdmin
from portal.models import App, Conversation, Message

# The catalogue's admin (fields, service keys, usage this month) lives with the catalogue.
admin.site.register(App, AppAdmin)


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = [
        "title",
        "owner",
        "model",
        "pinned",
        "updated_at",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
    ]
    list_filter = ["pinned", "model"]
    search_fields = ["title", "owner__username"]
    raw_id_fields = ["owner"]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "conversation",
        "role",
        "model",
        "status",
        "completion_tokens",
        "cost_usd",
        "created_at",
    ]
    list_filter = ["role", "status"]
    raw_id_fields = ["conversation"]
    search_fields = ["request_id"]
    exclude = ["rendered_html"]  # derived from content; never edited by hand
