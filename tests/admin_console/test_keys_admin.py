"""Keys in the console: issue (secret shown once), revoke, rotate, and the bulk actions for leavers."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from gateway import keys
from gateway.models import ApiKey
from gateway.services import key_issue
from portal.models import AuditEvent
from quotas.models import QuotaRule

pytestmark = pytest.mark.django_db

SECRET = re.compile(r'<code class="issued-secret">([^<]+)</code>')


@pytest.fixture
def root_user(django_user_model: type[User]) -> User:
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw")


@pytest.fixture
def root(root_user: User) -> Client:
    client = Client()
    client.force_login(root_user)
    return client


def act(client: Client, action: str, model: str, pks: list[int]) -> Any:
    url = reverse(f"admin:{model}_changelist")
    return client.post(url, {"action": action, "_selected_action": [str(pk) for pk in pks]})


def test_issuing_a_key_shows_its_secret_once_and_stores_only_a_digest(root: Client, alice: User) -> None:
    response = root.post(reverse("admin:gateway_apikey_add"), {
        "name": "alice's laptop", "user": alice.pk, "allowed_models": "[]", "expires_at_0": "", "expires_at_1": ""})  # fmt: skip
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    [plaintext] = SECRET.findall(response.content.decode())
    assert keys.well_formed(plaintext)
    key = ApiKey.objects.get()
    assert key.digest == keys.digest(plaintext) and key.user == alice and key.created_by.username == "root"
    # Not in a cookie (messages), not in the session, not on the key's page, not in the audit log.
    assert all(plaintext not in morsel.value for morsel in root.cookies.values())
    assert all(plaintext not in s.get_decoded().__repr__() for s in Session.objects.all())
    assert plaintext not in root.get(reverse("admin:gateway_apikey_change", args=[key.pk])).content.decode()
    [event] = AuditEvent.objects.filter(object_type="gateway.apikey")
    assert event.action == "key.issued" and event.actor == "root" and event.before is None
    assert (
        _d(event.after)["digest"] == "<secret>"
        and plaintext not in str(event.after)
        and key.digest not in str(event.after)
    )


def test_rotating_issues_a_replacement_and_lets_the_old_key_expire(
    root: Client, alice: User, settings: Any
) -> None:
    settings.API_KEY_ROTATION_GRACE_HOURS = 2
    old, _ = key_issue(name="ci", user=alice, models=["gpt-4o-mini"])
    QuotaRule.objects.create(subject_type="key", key=old, metric="requests", window="day", limit=10)
    AuditEvent.objects.all().delete()
    response = act(root, "rotate", "gateway_apikey", [old.pk])
    assert response.status_code == 200
    [plaintext] = SECRET.findall(response.content.decode())
    new = ApiKey.objects.exclude(pk=old.pk).get()
    assert new.digest == keys.digest(plaintext)
    assert (new.name, new.user, new.allowed_models) == ("ci", alice, ["gpt-4o-mini"])
    old.refresh_from_db()
    assert old.state == "active"  # still valid during the grace period
    assert old.expires_at is not None
    assert abs((old.expires_at - timezone.now()) - timedelta(hours=2)) < timedelta(minutes=1)
    assert QuotaRule.objects.filter(key=new, limit=10).exists()
    [event] = AuditEvent.objects.all()
    assert event.action == "key.rotated" and event.object_id == str(old.pk)
    assert _d(event.after)["replaced_by"] == new.pk and _d(event.before)["expires_at"] is None


def test_revoking_from_the_console_leaves_one_audit_row_per_key(root: Client, alice: User) -> None:
    first, _ = key_issue(name="a", user=alice)
    second, _ = key_issue(name="b", user=alice)
    AuditEvent.objects.all().delete()
    act(root, "revoke", "gateway_apikey", [first.pk, second.pk])
    assert set(ApiKey.objects.values_list("revoked_at", flat=True)) != {None}
    rows = sorted(AuditEvent.objects.all(), key=lambda r: int(r.object_id))
    assert [(r.action, r.object_id) for r in rows] == [
        ("key.revoked", str(first.pk)),
        ("key.revoked", str(second.pk)),
    ]
    assert _d(rows[0].before)["revoked_at"] is None and _d(rows[0].after)["revoked_at"] is not None


def test_revoke_all_keys_of_a_leaver(root: Client, alice: User, bob: User) -> None:
    for name in ("x", "y"):
        key_issue(name=name, user=alice)
    bobs, _ = key_issue(name="z", user=bob)
    act(root, "revoke_all_keys", "auth_user", [alice.pk])
    assert not ApiKey.objects.active().filter(user=alice).exists()
    assert ApiKey.objects.active().get() == bobs


def test_disable_a_user_everywhere(root: Client, root_user: User, alice: User) -> None:
    key_issue(name="x", user=alice)
    session = Client()
    session.force_login(alice)
    assert session.get("/").status_code == 200
    act(root, "disable_everywhere", "auth_user", [alice.pk, root_user.pk])
    alice.refresh_from_db()
    assert not alice.is_active and not ApiKey.objects.active().filter(user=alice).exists()
    assert User.objects.get(pk=root_user.pk).is_active  # an admin cannot lock themselves out this way
    assert session.get("/").status_code == 302
    assert AuditEvent.objects.filter(action="user.disabled", object_id=str(alice.pk)).count() == 1
    assert AuditEvent.objects.filter(action="key.revoked").count() == 1


def _d(value: Any) -> Any:
    """A JSON snapshot, typed loosely for the assertions."""
    return value
