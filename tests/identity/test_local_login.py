"""The local password login: on, break-glass superusers only, or off (LOCAL_LOGIN)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.checks import run_checks
from django.test import Client

pytestmark = pytest.mark.django_db


def login(username: str, password: str) -> tuple[int, Client]:
    client = Client()
    response = client.post("/accounts/login/", {"username": username, "password": password})
    return response.status_code, client


def test_everyone_with_a_password_may_sign_in_by_default(alice: User) -> None:
    status, client = login("alice", "alice-password")
    assert status == 302 and client.get("/").status_code == 200


def test_superusers_only_keeps_break_glass_admins(settings: Any, alice: User) -> None:
    User.objects.create_superuser("root", "root@example.com", "root-password")
    settings.LOCAL_LOGIN = "superusers"
    assert login("alice", "alice-password")[0] == 200  # the form again, with an error
    status, client = login("root", "root-password")
    assert status == 302 and client.get("/admin/").status_code == 200


def test_off_refuses_passwords_and_ends_password_sessions(settings: Any, alice: User) -> None:
    status, client = login("alice", "alice-password")
    assert status == 302
    settings.LOCAL_LOGIN = "off"
    assert client.get("/").status_code == 302  # the password session no longer authenticates
    assert login("alice", "alice-password")[0] == 200
    admin = Client().post("/admin/login/", {"username": "alice", "password": "alice-password"})
    assert admin.status_code == 200


def test_permissions_still_work_when_passwords_are_off(settings: Any, alice: User) -> None:
    settings.LOCAL_LOGIN = "off"
    alice.is_superuser = True
    alice.save()
    assert alice.has_perm("quotas.view_usageevent")


def test_the_settings_are_checked(settings: Any) -> None:
    settings.LOCAL_LOGIN = "maybe"
    settings.AZURE_AD_TENANT_ID = "contoso.onmicrosoft.com"
    settings.AZURE_AD_CLIENT_ID = ""
    settings.AZURE_AD_AUTHORITY = "http://login.example.com"
    ids = {m.id for m in run_checks(tags=["identity"])}
    assert {"identity.E001", "identity.E002", "identity.E003", "identity.E004"} <= ids
