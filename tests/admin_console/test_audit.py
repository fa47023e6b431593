"""The audit log: one row per audited action, with who, when, what, before and after, and no secret."""

from __future__ import annotations

import csv
import io
import json
import time
from datetime import timedelta
from typing import Any

import openai
import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from gateway.models import ApiKey, Provider
from gateway.services import key_issue, key_revoke
from portal.audit import is_secret, keys_audit_expired
from portal.models import AuditEvent

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def root_user(db: None, django_user_model: type[User]) -> User:
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw")


@pytest.fixture
def root(root_user: User) -> Client:
    client = Client()
    client.force_login(root_user)
    return client


def everything() -> str:
    return json.dumps([[e.before, e.after, e.object_repr] for e in AuditEvent.objects.all()])


@pytest.mark.django_db
def test_an_admin_change_leaves_one_row_with_who_what_before_and_after(
    root: Client, alice: User, bob: User
) -> None:
    sales = Group.objects.create(name="sales")
    sales.user_set.add(alice)
    AuditEvent.objects.all().delete()
    url = reverse("admin:auth_group_change", args=[sales.pk])
    formsets = {f"{p}-{k}": v for p in ("quota_rules", "entra_mappings")
                for k, v in {"TOTAL_FORMS": "0", "INITIAL_FORMS": "0", "MIN_NUM_FORMS": "0", "MAX_NUM_FORMS": "1000"}.items()}  # fmt: skip
    response = root.post(url, {"name": "sales-emea", "members": [bob.pk], **formsets})
    assert response.status_code == 302, response.content.decode()[:2000]
    [event] = AuditEvent.objects.all()
    assert (event.action, event.actor, event.object_type, event.object_id) == (
        "update",
        "root",
        "auth.group",
        str(sales.pk),
    )
    assert _d(event.before)["name"] == "sales" and _d(event.after)["name"] == "sales-emea"
    assert _d(event.before)["members"] == [alice.pk] and _d(event.after)["members"] == [bob.pk]
    assert event.ip == "127.0.0.1" and event.created_at > timezone.now() - timedelta(minutes=1)
    # Saving without a change writes nothing.
    root.post(url, {"name": "sales-emea", "members": [bob.pk], **formsets})
    assert AuditEvent.objects.count() == 1


@pytest.mark.django_db
def test_a_provider_credential_never_reaches_the_audit_log(root: Client) -> None:
    data = {"name": "openai", "kind": "openai", "base_url": "https://api.openai.com/v1", "api_key": "sk-live-SECRET-1",
            "api_key_env": "", "api_version": "", "region": "", "enabled": "on", "timeout_seconds": "600",
            "connect_timeout_seconds": "10", "extra_headers": json.dumps({"Authorization": "Bearer hdr-SECRET", "X-Team": "a"}),
            "flags": "[]", "options": "{}"}  # fmt: skip
    assert root.post(reverse("admin:gateway_provider_add"), data).status_code == 302
    provider = Provider.objects.get()
    [created] = AuditEvent.objects.filter(object_type="gateway.provider")
    assert created.action == "create" and _d(created.after)["api_key_encrypted"] == "<secret>"
    assert _d(created.after)["extra_headers"] == {"Authorization": "<secret>", "X-Team": "a"}
    root.post(
        reverse("admin:gateway_provider_change", args=[provider.pk]), {**data, "api_key": "sk-live-SECRET-2"}
    )
    changed = AuditEvent.objects.filter(object_type="gateway.provider").latest("id")
    assert changed.action == "update" and _d(changed.after)["api_key_encrypted"] == "<secret changed>"
    dump = everything()
    provider.refresh_from_db()
    for secret in ("sk-live-SECRET-1", "sk-live-SECRET-2", "hdr-SECRET", provider.api_key_encrypted):
        assert secret not in dump


@pytest.mark.django_db
def test_a_password_change_is_recorded_without_the_hash(root: Client, alice: User) -> None:
    AuditEvent.objects.all().delete()
    url = reverse("admin:auth_user_password_change", args=[alice.pk])
    root.post(
        url, {"password1": "A-new-long-pass-8", "password2": "A-new-long-pass-8", "usable_password": "true"}
    )
    [event] = AuditEvent.objects.filter(object_type="auth.user")
    alice.refresh_from_db()
    assert _d(event.after)["password"] == "<secret changed>" and alice.password not in everything()


@pytest.mark.django_db
def test_management_api_changes_are_audited(root: Client, alice: User) -> None:
    response = root.post("/api/quotas/rules", {"subject": "user:alice", "metric": "requests", "window": "day", "limit": 5},
                         content_type="application/json")  # fmt: skip
    assert response.status_code == 201, response.content
    [event] = AuditEvent.objects.filter(object_type="quotas.quotarule")
    assert event.action == "create" and event.actor == "root" and _d(event.after)["limit"] == "5.000000"


@pytest.mark.django_db
def test_keys_issued_outside_the_console_are_audited_too(alice: User) -> None:
    call_command("issue_key", "--user", "alice", stdout=io.StringIO())
    [event] = AuditEvent.objects.all()
    assert event.action == "key.issued" and event.actor == "system"
    key_revoke(key=ApiKey.objects.get())
    assert list(AuditEvent.objects.values_list("action", flat=True).order_by("id")) == [
        "key.issued",
        "key.revoked",
    ]


@pytest.mark.django_db
def test_the_log_is_read_only_filterable_and_exportable(root: Client, alice: User) -> None:
    key, _ = key_issue(name="a", user=alice)
    key_revoke(key=key)
    changelist = reverse("admin:portal_auditevent_changelist")
    assert root.get(f"{changelist}?action=key.revoked").status_code == 200
    event = AuditEvent.objects.first()
    assert event is not None
    count = AuditEvent.objects.count()
    assert root.get(reverse("admin:portal_auditevent_add")).status_code == 403
    assert (
        root.post(reverse("admin:portal_auditevent_delete", args=[event.pk]), {"post": "yes"}).status_code
        == 403
    )
    assert (
        root.post(reverse("admin:portal_auditevent_change", args=[event.pk]), {"action": "x"}).status_code
        == 403
    )
    assert AuditEvent.objects.count() == count
    export = root.get(reverse("admin:portal_auditevent_export") + "?action=key.revoked")
    rows = list(csv.reader(io.StringIO(export.content.decode())))
    assert rows[0][:4] == ["time", "actor", "actor_id", "action"]
    assert [r[3] for r in rows[1:]] == ["key.revoked"]


@pytest.mark.django_db
def test_expired_keys_are_recorded_once_by_the_sweep(alice: User) -> None:
    key_issue(name="old", user=alice, expires_at=timezone.now() - timedelta(minutes=1))
    assert keys_audit_expired() == 1 and keys_audit_expired() == 0
    assert AuditEvent.objects.filter(action="key.expired").count() == 1


def test_secret_names_are_recognised() -> None:
    for name in (
        "password",
        "api_key_encrypted",
        "digest",
        "client_secret",
        "access_token",
        "Authorization",
        "x-api-key",
    ):
        assert is_secret(name), name
    for name in ("api_key_env", "prompt_tokens", "hint", "name", "tokens_estimated", "key_id"):
        assert not is_secret(name), name


def wait_for(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


def test_the_hot_path_records_first_use_refusals_and_expiry(
    gateway: Any, alice_key: Any, ledger: Any
) -> None:
    user, plaintext = alice_key
    key = ApiKey.objects.get(user=user)
    sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=plaintext, max_retries=0)
    for _ in range(2):
        sdk.chat.completions.create(**BODY)  # type: ignore[call-overload]
    ledger(2)
    assert AuditEvent.objects.filter(action="key.first_use", object_id=str(key.pk)).count() == 1
    key_revoke(key=key)
    time.sleep(0.3)  # the change signal reaches the gateway
    for _ in range(3):
        with pytest.raises(openai.AuthenticationError):
            sdk.chat.completions.create(**BODY)  # type: ignore[call-overload]
    refused = wait_for(lambda: list(AuditEvent.objects.filter(action="key.refused", object_id=str(key.pk))))
    time.sleep(0.3)
    assert (
        len(AuditEvent.objects.filter(action="key.refused", object_id=str(key.pk))) == 1
    )  # once a minute at most
    assert refused[0].after == {"reason": "revoked"} and refused[0].ip == "127.0.0.1"
    expired, old_plaintext = key_issue(
        name="old", user=user, expires_at=timezone.now() - timedelta(seconds=5)
    )
    old_sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=old_plaintext, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        old_sdk.chat.completions.create(**BODY)  # type: ignore[call-overload]
    assert wait_for(
        lambda: AuditEvent.objects.filter(action="key.expired", object_id=str(expired.pk)).count() == 1
    )
    assert AuditEvent.objects.filter(action="key.refused", object_id=str(expired.pk)).count() == 1


def _d(value: Any) -> Any:
    """A JSON snapshot, typed loosely for the assertions."""
    return value
