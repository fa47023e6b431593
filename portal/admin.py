from __future__ import annotations

from django.contrib import admin

from portal import identity_admin  # noqa: F401 (users, groups, Entra ID mapping, audit log)
from portal.models import App


@admin.register(App)
class AppAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "owner_group", "url", "entra_app_id"]
    prepopulated_fields = {"slug": ["name"]}
    search_fields = ["name", "entra_app_id"]
