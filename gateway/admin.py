"""The admin console for the gateway: providers, models with prices and deployments, keys."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from gateway import keys, routing
from gateway.models import ApiKey, CatalogModel, DataPolicy, Deployment, Provider
from portal import audit


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
    """Deployments with their live health: breaker state, recent error rate and latency (last 5 min)."""

    list_display = ["model", "provider", "provider_model", "region", "weight", "priority", "enabled", "health_state",
                    "error_rate", "latency_p50"]  # fmt: skip
    list_filter = ["provider", "enabled", "region"]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        try:
            self._health = routing.health_read()
        except Exception:  # the health store may be down: the list must still load
            self._health = {}
        return super().changelist_view(request, extra_context)

    def _h(self, obj: Deployment) -> dict[str, Any]:
        return getattr(self, "_health", {}).get(obj.pk, {})

    @admin.display(description="state")
    def health_state(self, obj: Deployment) -> str:
        return str(self._h(obj).get("state", "no traffic"))

    @admin.display(description="errors (5 min)")
    def error_rate(self, obj: Deployment) -> str:
        h = self._h(obj)
        return f"{float(h['error_rate']) * 100:.0f}% of {h['requests']}" if h.get("requests") else "—"

    @admin.display(description="p50 latency")
    def latency_p50(self, obj: Deployment) -> str:
        p50 = self._h(obj).get("p50_ms")
        return f"{float(p50):.0f} ms" if p50 is not None else "—"


@admin.register(DataPolicy)
class DataPolicyAdmin(admin.ModelAdmin):
    list_display = ["group", "allowed_regions", "allowed_providers", "required_flags"]


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


class ApiKeyLastUsedFilter(admin.SimpleListFilter):
    title = "last used"
    parameter_name = "used"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("never", "never"), ("day", "in the last 24 hours"), ("week", "in the last 7 days"),
                ("stale", "not in the last 30 days")]  # fmt: skip

    def queryset(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> QuerySet[ApiKey]:
        now = timezone.now()
        if self.value() == "never":
            return queryset.filter(last_used_at__isnull=True)
        if self.value() == "day":
            return queryset.filter(last_used_at__gte=now - timedelta(days=1))
        if self.value() == "week":
            return queryset.filter(last_used_at__gte=now - timedelta(days=7))
        if self.value() == "stale":
            return queryset.filter(last_used_at__lt=now - timedelta(days=30))
        return queryset


class ApiKeyOwnerTypeFilter(admin.SimpleListFilter):
    title = "owner type"
    parameter_name = "owner"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("user", "a user"), ("app", "an app (service key)")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> QuerySet[ApiKey]:
        if self.value() == "user":
            return queryset.filter(user__isnull=False)
        if self.value() == "app":
            return queryset.filter(app__isnull=False)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "hint", "user", "app", "state", "expires_at", "last_used_at", "created_at"]
    list_filter = [ApiKeyStateFilter, ApiKeyOwnerTypeFilter, ("user", admin.RelatedOnlyFieldListFilter),
                   ("app", admin.RelatedOnlyFieldListFilter), ApiKeyLastUsedFilter, "created_at"]  # fmt: skip
    search_fields = ["name", "hint", "user__username", "user__email", "app__name"]
    list_select_related = ["user", "app"]
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
    autocomplete_fields = ["user"]
    actions = ["revoke", "rotate"]

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if not change:
            plaintext = keys.generate()
            obj.set_secret(plaintext)
            obj.created_by = request.user  # type: ignore[assignment]
            super().save_model(request, obj, form, change)
            audit.record(action="key.issued", instance=obj, actor=request.user)
            setattr(request, "issued_secrets", [(obj, plaintext)])  # noqa: B010 (shown by response_add)
            return
        super().save_model(request, obj, form, change)

    def response_add(
        self, request: HttpRequest, obj: ApiKey, post_url_continue: str | None = None
    ) -> HttpResponse:
        issued = getattr(request, "issued_secrets", None)
        if issued:
            return self.secrets_page(request, issued, title="API key issued")
        return super().response_add(request, obj, post_url_continue)

    def secrets_page(
        self, request: HttpRequest, issued: list[tuple[ApiKey, str]], *, title: str
    ) -> HttpResponse:
        """The only time a secret is shown: in this response, never stored, never in a cookie or the session."""
        context = {**self.admin_site.each_context(request), "title": title, "issued": issued,
                   "opts": self.model._meta}  # fmt: skip
        response = TemplateResponse(request, "admin/gateway/apikey/secrets.html", context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke the selected keys", permissions=["change"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        from gateway.services import key_revoke

        count = 0
        for key in queryset.filter(revoked_at__isnull=True):
            key_revoke(key=key, actor=request.user)  # type: ignore[arg-type]
            count += 1
        self.message_user(request, f"Revoked {count} key(s).")

    @admin.action(description="Rotate the selected keys (new key; the old one expires after the grace period)",
                  permissions=["change"])  # fmt: skip
    def rotate(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> HttpResponse | None:
        from gateway.services import key_rotate

        issued = [key_rotate(key=key, actor=request.user) for key in queryset.filter(revoked_at__isnull=True)]  # type: ignore[arg-type]
        if not issued:
            self.message_user(request, "Nothing to rotate: revoked keys cannot be rotated.", messages.WARNING)
            return None
        return self.secrets_page(request, issued, title="API keys rotated")
