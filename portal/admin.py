from __future__ import annotations

from django.contrib import admin

from portal.models import App


@admin.register(App)
class AppAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "owner_group", "url"]
    prepopulated_fields = {"slug": ["name"]}
    search_fields = ["name"]
