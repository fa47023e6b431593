"""The admin console for the gateway: providers, models with prices and deployments, keys."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from gateway import keys
from gateway.models import ApiKey, CatalogModel, Deployment, Provider


class ProviderForm(forms.ModelForm):
    # Write-only: the stored credential is never rendered back into the page.
    api_key = forms.CharField(
        required=False, widget=forms.PasswordInput(render_value=False),
        help_text="Leave empty to keep the current credential. Stored encrypted.",
    )  # fmt: skip
    clear_api_key = forms.BooleanField(required=False, help_text="Remove the stored credential")

    class Meta:
        model = Provider
        fields = [
            "name", "kind", "base_url", "api_key", "clear_api_key", "api_key_env", "api_version", "region",
            "enabled", "timeout_seconds", "connect_timeout_seconds", "extra_headers",
        ]  # fmt: skip


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    form = ProviderForm
    list_display = ["name", "kind", "base_url", "region", "enabled", "has_credential"]
    list_filter = ["kind", "enabled", "region"]
    search_fields = ["name", "base_url"]

    @admin.display(boolean=True, description="credential")
    def has_credential(self, obj: Provider) -> bool:
        return bool(obj.api_key_encrypted or obj.api_key_env)

    def save_model(self, request: HttpRequest, obj: Provider, form: Any, change: bool) -> None:
        if form.cleaned_data.get("clear_api_key"):
            obj.set_api_key("")
        elif form.cleaned_data.get("api_key"):
            obj.set_api_key(form.cleaned_data["api_key"])
        super().save_model(request, obj, form, change)


class DeploymentInline(admin.TabularInline):
    model = Deployment
    extra = 0


@admin.register(CatalogModel)
class CatalogModelAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "enabled", "input_per_mtok", "output_per_mtok", "cached_input_per_mtok"]
    list_filter = ["kind", "enabled"]
    search_fields = ["name"]
    filter_horizontal = ["allowed_groups"]
    inlines = [DeploymentInline]


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ["model", "provider", "provider_model", "weight", "priority", "enabled"]
    list_filter = ["provider", "enabled"]


class ApiKeyStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("active", "active"), ("revoked", "revoked"), ("expired", "expired")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> QuerySet[ApiKey]:
        now = timezone.now()
        if self.value() == "active":
            return queryset.filter(pk__in=ApiKey.objects.active().values("pk"))
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        if self.value() == "expired":
            return queryset.filter(revoked_at__isnull=True, expires_at__lte=now)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "hint", "user", "app", "state", "expires_at", "last_used_at", "created_at"]
    list_filter = [ApiKeyStateFilter, "app", "created_at", "last_used_at"]
    search_fields = ["name", "hint", "user__username", "app__name"]
    readonly_fields = ["hint", "last_used_at", "created_at", "created_by", "revoked_at"]
    fields = [
        "name",
        "user",
        "app",
        "allowed_models",
        "expires_at",
        "hint",
        "revoked_at",
        "last_used_at",
        "created_at",
        "created_by",
    ]
    actions = ["revoke"]

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if not change:
            plaintext = keys.generate()
            obj.set_secret(plaintext)
            obj.created_by = request.user  # type: ignore[assignment]
            super().save_model(request, obj, form, change)
            # The only time the secret is ever shown.
            messages.warning(
                request, f"New key (copy it now, it is not stored and will not be shown again): {plaintext}"
            )
            return
        super().save_model(request, obj, form, change)

    @admin.action(description="Revoke the selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        from gateway.services import key_revoke

        for key in queryset.filter(revoked_at__isnull=True):
            key_revoke(key=key)
        self.message_user(request, "Revoked.")
