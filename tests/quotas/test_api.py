"""The quotas management API: staff only, documented in the OpenAPI schema."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.contrib.auth.models import User
from django.test import Client

from gateway.services import key_issue
from quotas.models import QuotaRule, UsageEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(django_user_model: type[User]) -> User:
    return django_user_model.objects.create_user("root", is_staff=True)


def test_non_staff_are_refused(alice: User) -> None:
    client = Client()
    assert client.get("/api/quotas/rules").status_code == 401
    client.force_login(alice)
    assert client.get("/api/quotas/rules").status_code == 403
    _, key = key_issue(name="k", user=alice)
    assert Client().get("/api/quotas/rules", HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 403


def test_a_staff_key_manages_rules_and_reads_usage(staff: User, alice: User) -> None:
    _, key = key_issue(name="ops", user=staff)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    client = Client()
    created = client.post("/api/quotas/rules", {"subject": "user:alice", "metric": "requests", "window": "day", "limit": 10},
                          content_type="application/json", **auth)  # fmt: skip
    assert created.status_code == 201, created.content
    rule_id = created.json()["id"]
    assert created.json()["subject"] == "user:alice"
    assert QuotaRule.objects.get(pk=rule_id).user == alice
    patched = client.patch(
        f"/api/quotas/rules/{rule_id}", {"limit": 20}, content_type="application/json", **auth
    )
    assert patched.json()["limit"] == "20.000000" or float(patched.json()["limit"]) == 20
    bad = client.post("/api/quotas/rules", {"subject": "user:nobody", "metric": "requests", "window": "day", "limit": 1},
                      content_type="application/json", **auth)  # fmt: skip
    assert bad.status_code == 400 and "unknown user" in bad.json()["detail"]
    for body in ({"subject": "user:alice", "metric": "tokens", "window": "day", "limit": 10**12},):
        too_big = client.post("/api/quotas/rules", body, content_type="application/json", **auth)
        assert too_big.status_code == 422, too_big.content
    too_big = client.patch(
        f"/api/quotas/rules/{rule_id}", {"limit": 10**12}, content_type="application/json", **auth
    )
    assert too_big.status_code == 422 and QuotaRule.objects.get(pk=rule_id).limit == 20
    UsageEvent.objects.create(request_id="x", created_at=datetime.now(tz=UTC), user=alice, endpoint="chat/completions",
                              model="gpt-4o", status=200, prompt_tokens=3, completion_tokens=4)  # fmt: skip
    usage = client.get("/api/quotas/usage?group_by=user", **auth).json()
    assert (
        usage
        == [{"key": "alice", "requests": 1, "prompt_tokens": 3, "completion_tokens": 4, "cost_usd": "0E-10"}]
        or usage[0]["requests"] == 1
    )
    assert client.delete(f"/api/quotas/rules/{rule_id}", **auth).status_code == 204
    assert not QuotaRule.objects.exists()


def test_the_openapi_schema_documents_the_routes() -> None:
    schema = Client().get("/api/openapi.json").json()
    assert {"/api/quotas/rules", "/api/quotas/rules/{rule_id}", "/api/quotas/usage"} <= set(schema["paths"])


def test_the_admin_lists_rules_with_current_usage(staff: User, alice: User) -> None:
    staff.is_superuser = True
    staff.save()
    QuotaRule.objects.create(subject_type="user", user=alice, metric="requests", window="day", limit=5)
    client = Client()
    client.force_login(staff)
    page = client.get("/admin/quotas/quotarule/")
    assert page.status_code == 200
    assert "Used this window" in page.content.decode()
    assert "0 (0%)" in page.content.decode()
