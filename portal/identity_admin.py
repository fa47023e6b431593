"""The admin console for people: users, departments (groups) with members and quotas, the Entra ID
mapping, and the read-only audit log. Imported by portal/admin.py (the admin autodiscovers that).
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.widgets import FilteredSelectMultiple
from django.contrib.auth.admin import GroupAdmin as DjangoGroupAdmin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.models import Group, User
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.utils.html import format_html
from social_django.models import UserSocialAuth

from gateway.models import ApiKey
from portal.identity import BACKEND_NAME, user_disable
from portal.models import AuditEvent, GroupMapping
from quotas.export import csv_response
from quotas.models import QuotaRule, SubjectType
from quotas.reports import rule_current_usage


class ApiKeyInline(admin.TabularInline):
    """A user's keys, read-only (issue keys from the keys page: the secret is shown there once)."""

    model = ApiKey
    fk_name = "user"
    fields = ["name", "hint", "state", "expires_at", "last_used_at", "revoked_at"]
    readonly_fields = ["name", "hint", "state", "expires_at", "last_used_at", "revoked_at"]
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class _SubjectRuleForm(forms.ModelForm):
    """A quota rule edited inline: its subject is the page's user or group."""

    subject_types: tuple[str, ...] = ()

    class Meta:
        model = QuotaRule
        fields = [
            "subject_type",
            "name",
            "metric",
            "window",
            "limit",
            "model_names",
            "warn_at_percent",
            "enabled",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["subject_type"]
        field.choices = [c for c in SubjectType.choices if c[0] in self.subject_types]  # type: ignore[attr-defined]
        if len(self.subject_types) == 1:
            self.instance.subject_type = self.subject_types[0]
            field.initial = self.subject_types[0]
            field.widget = forms.HiddenInput()


class _UserRuleForm(_SubjectRuleForm):
    subject_types = (SubjectType.USER,)


class _GroupRuleForm(_SubjectRuleForm):
    subject_types = (SubjectType.GROUP, SubjectType.GROUP_MEMBER)


class _RuleInline(admin.TabularInline):
    model = QuotaRule
    extra = 0
    readonly_fields = ["current_usage"]

    @admin.display(description="used this window")
    def current_usage(self, obj: QuotaRule) -> str:
        if obj.pk is None:
            return "—"
        try:
            used = rule_current_usage(obj)
        except Exception:  # the counter store may be down; the page must still load
            return "unavailable"
        share = used / float(obj.limit) * 100 if obj.limit else 100.0
        return f"{used:g} ({share:.0f}%)"


class UserQuotaRuleInline(_RuleInline):
    form = _UserRuleForm
    fk_name = "user"
    verbose_name_plural = "quota rules of this user"


class GroupQuotaRuleInline(_RuleInline):
    form = _GroupRuleForm
    fk_name = "group"
    verbose_name_plural = "quota rules of this department"


class GroupMappingInline(admin.TabularInline):
    model = GroupMapping
    extra = 0
    fields = ["source", "value", "grants_staff", "grants_superuser", "note"]
    verbose_name_plural = "Entra ID groups and app roles that make members of this department"


class SignInFilter(admin.SimpleListFilter):
    title = "sign-in"
    parameter_name = "signin"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("entra", "Entra ID"), ("password", "password only")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[User]) -> QuerySet[User]:
        linked = UserSocialAuth.objects.filter(provider=BACKEND_NAME).values("user_id")
        if self.value() == "entra":
            return queryset.filter(pk__in=linked)
        if self.value() == "password":
            return queryset.exclude(pk__in=linked)
        return queryset


admin.site.unregister(User)
admin.site.unregister(Group)


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    list_display = ["username", "email", "first_name", "last_name", "departments", "is_active", "is_staff",
                    "last_login"]  # fmt: skip
    list_filter = ["is_active", "is_staff", "is_superuser", SignInFilter, "groups"]
    readonly_fields = ["entra_identity", "last_login", "date_joined"]
    fieldsets = (*DjangoUserAdmin.fieldsets, ("Entra ID", {"fields": ("entra_identity",)}))  # type: ignore[misc]
    inlines = [ApiKeyInline, UserQuotaRuleInline]
    actions = ["revoke_all_keys", "disable_everywhere"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[User]:
        return super().get_queryset(request).prefetch_related("groups")

    @admin.display(description="departments")
    def departments(self, obj: User) -> str:
        return ", ".join(sorted(g.name for g in obj.groups.all())) or "—"

    @admin.display(description="Entra ID account (tenant:object id)")
    def entra_identity(self, obj: User) -> str:
        uids = UserSocialAuth.objects.filter(user=obj, provider=BACKEND_NAME).values_list("uid", flat=True)
        return ", ".join(uids) or "— (password only)"

    @admin.action(description="Revoke every key of the selected users", permissions=["change"])
    def revoke_all_keys(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        from gateway.services import keys_revoke_for_users

        count = keys_revoke_for_users(users=queryset, actor=request.user)  # type: ignore[arg-type]
        self.message_user(request, f"Revoked {count} key(s) of {queryset.count()} user(s).")

    @admin.action(description="Disable the selected users everywhere (sign-in, sessions, keys, API tokens)",
                  permissions=["change"])  # fmt: skip
    def disable_everywhere(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        users = [u for u in queryset if u.pk != request.user.pk]
        for user in users:
            user_disable(user=user, actor=request.user)  # type: ignore[arg-type]
        skipped = " (not yourself)" if len(users) < queryset.count() else ""
        self.message_user(request, f"Disabled {len(users)} user(s){skipped}.", messages.SUCCESS)


class GroupForm(forms.ModelForm):
    members = forms.ModelMultipleChoiceField(
        queryset=User.objects.order_by("username"), required=False,
        widget=FilteredSelectMultiple("members", is_stacked=False),
    )  # fmt: skip

    class Meta:
        model = Group
        fields = ["name", "members", "permissions"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            self.fields["members"].initial = list(self.instance.user_set.values_list("pk", flat=True))


@admin.register(Group)
class GroupAdmin(DjangoGroupAdmin):
    """A department: members, quota rules (with current usage) and the Entra ID groups that feed it.

    The data policy of a department is the gateway's (routing) part: add its inline to ``inlines``.
    """

    form = GroupForm
    list_display = ["name", "member_count", "rule_count", "mapped_from"]
    inlines = [GroupQuotaRuleInline, GroupMappingInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Group]:
        return (
            super().get_queryset(request)
            .annotate(members_n=Count("user", distinct=True), rules_n=Count("quota_rules", distinct=True))
            .prefetch_related("entra_mappings")
        )  # fmt: skip

    @admin.display(description="members", ordering="members_n")
    def member_count(self, obj: Any) -> int:
        return int(obj.members_n)

    @admin.display(description="quota rules", ordering="rules_n")
    def rule_count(self, obj: Any) -> int:
        return int(obj.rules_n)

    @admin.display(description="from Entra ID")
    def mapped_from(self, obj: Group) -> str:
        return ", ".join(m.value for m in obj.entra_mappings.all()) or "—"

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        form.instance.user_set.set(form.cleaned_data["members"])


@admin.register(GroupMapping)
class GroupMappingAdmin(admin.ModelAdmin):
    list_display = ["source", "value", "group", "grants_staff", "grants_superuser", "note"]
    list_filter = ["source", "grants_staff", "grants_superuser", "group"]
    search_fields = ["value", "note", "group__name"]
    autocomplete_fields = ["group"]


class AuditActorFilter(admin.SimpleListFilter):
    title = "actor kind"
    parameter_name = "actor_kind"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("person", "a person"), ("system", "gateway, Entra ID or system")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[AuditEvent]) -> QuerySet[AuditEvent]:
        if self.value() == "person":
            return queryset.filter(actor_id__isnull=False)
        if self.value() == "system":
            return queryset.filter(actor_id__isnull=True)
        return queryset


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only: rows are written by the audit hooks only, and never hold a secret."""

    change_list_template = "admin/portal/auditevent/change_list.html"
    list_display = ["created_at", "actor", "action", "object_type", "object_repr", "ip"]
    list_filter = ["action", "object_type", AuditActorFilter, "created_at"]
    search_fields = ["actor", "object_repr", "object_id", "ip", "action"]
    date_hierarchy = "created_at"
    fields = ["created_at", "actor", "actor_id", "action", "object_type", "object_id", "object_repr", "ip",
              "changes", "before_json", "after_json"]  # fmt: skip
    readonly_fields = ["created_at", "actor", "actor_id", "action", "object_type", "object_id", "object_repr",
                       "ip", "changes", "before_json", "after_json"]  # fmt: skip
    actions = ["export_selected"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="changed fields")
    def changes(self, obj: AuditEvent) -> str:
        before, after = obj.before or {}, obj.after or {}
        names = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        return ", ".join(names) or "—"

    @admin.display(description="before")
    def before_json(self, obj: AuditEvent) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.before, indent=2, sort_keys=True))

    @admin.display(description="after")
    def after_json(self, obj: AuditEvent) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.after, indent=2, sort_keys=True))

    def get_urls(self) -> list[Any]:
        export = path(
            "export/", self.admin_site.admin_view(self.export_view), name="portal_auditevent_export"
        )
        return [export, *super().get_urls()]

    def export_view(self, request: HttpRequest) -> HttpResponse:
        """The rows the change list shows with its current filters and search, as CSV."""
        if not self.has_view_permission(request):
            return HttpResponse(status=403)
        changelist = self.get_changelist_instance(request)
        return self._csv(changelist.get_queryset(request))

    @admin.action(description="Export the selected rows as CSV", permissions=["view"])
    def export_selected(self, request: HttpRequest, queryset: QuerySet[AuditEvent]) -> HttpResponse:
        return self._csv(queryset)

    @staticmethod
    def _csv(queryset: QuerySet[AuditEvent]) -> HttpResponse:
        header = ["time", "actor", "actor_id", "action", "object_type", "object_id", "object", "ip", "before",
                  "after"]  # fmt: skip
        rows = (
            [e.created_at.isoformat(), e.actor, e.actor_id, e.action, e.object_type, e.object_id, e.object_repr,
             e.ip, json.dumps(e.before, sort_keys=True), json.dumps(e.after, sort_keys=True)]
            for e in queryset.order_by("created_at", "id").iterator()
        )  # fmt: skip
        return csv_response("audit-log.csv", header, rows)
