"""The admin console's pages load for staff and are refused to everyone else."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group, Permission, User
from django.test import Client
from django.urls import reverse

from gateway.services import key_issue
from portal.models import App, AuditEvent, GroupMapping
from quotas.models import QuotaRule

pytestmark = pytest.mark.django_db


@pytest.fixture
def root(django_user_model: type[User]) -> Client:
    client = Client()
    client.force_login(django_user_model.objects.create_superuser("root", "root@example.com", "pw"))
    return client


@pytest.fixture
def objects(alice: User) -> dict[str, Any]:
    sales = Group.objects.create(name="sales")
    alice.groups.add(sales)
    app = App.objects.create(name="Bot", slug="bot", owner_group=sales, entra_app_id="abc")
    key, _ = key_issue(name="k", user=alice)
    rule = QuotaRule.objects.create(
        subject_type="group", group=sales, metric="requests", window="day", limit=5
    )
    GroupMapping.objects.create(source="role", value="Sales", group=sales)
    return {
        "group": sales,
        "app": app,
        "key": key,
        "rule": rule,
        "user": alice,
        "audit": AuditEvent.objects.first(),
    }


def admin_urls() -> list[str]:
    urls = [reverse("admin:index"), reverse("usage:dashboard"), reverse("usage:chargeback")]
    for model, model_admin in admin.site._registry.items():
        info = (model._meta.app_label, model._meta.model_name)
        urls.append(reverse("admin:{}_{}_changelist".format(*info)))
        if model_admin.has_add_permission(_superuser_request()):
            urls.append(reverse("admin:{}_{}_add".format(*info)))
    return urls


def _superuser_request() -> Any:
    class _Request:
        user = type("U", (), {"is_active": True, "is_staff": True, "is_superuser": True,
                              "has_perm": lambda *a, **k: True})()  # fmt: skip

    return _Request()


def test_every_admin_page_loads_for_a_superuser(root: Client, objects: dict[str, Any]) -> None:
    for url in admin_urls():
        response = root.get(url)
        assert response.status_code == 200, url
    for name in ("group", "app", "key", "rule", "user", "audit"):
        obj = objects[name]
        url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
        assert root.get(url).status_code == 200, url


def test_search_and_filters_of_the_console_work(root: Client, objects: dict[str, Any]) -> None:
    keys = reverse("admin:gateway_apikey_changelist")
    for query in (
        "q=alice",
        "state=active",
        "owner=user",
        "used=never",
        f"user__id__exact={objects['user'].pk}",
    ):
        assert root.get(f"{keys}?{query}").status_code == 200, query
    users = reverse("admin:auth_user_changelist")
    for query in ("signin=entra", "signin=password", f"groups__id__exact={objects['group'].pk}"):
        assert root.get(f"{users}?{query}").status_code == 200, query


def test_the_console_is_refused_to_anonymous_and_non_staff_users(alice: User) -> None:
    anonymous = Client()
    signed_in = Client()
    signed_in.force_login(alice)
    for client in (anonymous, signed_in):
        for url in (reverse("admin:index"), reverse("admin:gateway_apikey_changelist"), reverse("usage:dashboard"),
                    reverse("usage:chargeback"), reverse("admin:portal_auditevent_export")):  # fmt: skip
            response = client.get(url)
            assert response.status_code == 302 and "/admin/login/" in response["Location"], url


def test_staff_see_only_what_their_permissions_allow(bob: User) -> None:
    bob.is_staff = True
    bob.save()
    client = Client()
    client.force_login(bob)
    assert client.get(reverse("admin:index")).status_code == 200
    assert client.get(reverse("admin:gateway_apikey_changelist")).status_code == 403
    assert client.get(reverse("usage:dashboard")).status_code == 403
    assert client.get(reverse("admin:portal_auditevent_changelist")).status_code == 403
    bob.user_permissions.add(Permission.objects.get(codename="view_usageevent"))
    bob = User.objects.get(pk=bob.pk)  # drop the permission cache
    client.force_login(bob)
    assert client.get(reverse("usage:dashboard")).status_code == 200
    assert client.get(reverse("usage:chargeback")).status_code == 200
