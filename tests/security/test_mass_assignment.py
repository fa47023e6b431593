"""No request body raises its sender's limits or privileges: extra fields are ignored or refused.

Every form or JSON endpoint that creates or updates an object gets the privileged fields a hostile
client would try (`is_staff`, `owner`, `owner_id`, `user`, `quota`, `limit`, `allowed_models`, a scope
with a group the user may not publish to); the database shows none took effect.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from gateway.models import ApiKey
from gateway.services import key_issue
from portal.models import Conversation
from prompts.models import Prompt
from quotas.models import QuotaRule

pytestmark = pytest.mark.django_db


@pytest.fixture
def mallory(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("mallory")


@pytest.fixture
def victim(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("victim")


def _hostile(victim: Any, group: Group) -> dict[str, Any]:
    return {
        "is_staff": "on", "is_superuser": "on", "owner": victim.pk, "owner_id": victim.pk, "user": victim.pk,
        "user_id": victim.pk, "quota": "1000000", "limit": "1000000", "allowed_models": "gpt-4.1",
        "groups": [group.pk], "published_version": "1", "use_count": "999", "cost_usd": "-5",
    }  # fmt: skip


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_new_conversation_belongs_to_its_sender(mallory: Any, victim: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr("portal.chat.user_models", lambda user_id: ["gpt-4o-mini"])
    group = Group.objects.create(name="board")
    response = _client(mallory).post(
        "/chat/new/", {"content": "hi", "model": "gpt-4o-mini", **_hostile(victim, group)}
    )
    assert response.status_code == 302
    conversation = Conversation.objects.get()
    assert conversation.owner_id == mallory.pk and conversation.cost_usd == 0
    mallory.refresh_from_db()
    assert not (mallory.is_staff or mallory.is_superuser) and not mallory.groups.exists()
    # Its settings take a model and a system prompt only: not an owner, not a model it may not use.
    _client(mallory).post(
        f"/chat/c/{conversation.pk}/settings/", {"model": "gpt-4.1", **_hostile(victim, group)}
    )
    conversation.refresh_from_db()
    assert (conversation.owner_id, conversation.model, conversation.prompt_tokens) == (
        mallory.pk,
        "gpt-4o-mini",
        0,
    )


def test_a_prompt_cannot_be_given_away_published_or_scoped_past_its_authors_rights(
    mallory: Any, victim: Any
) -> None:
    board = Group.objects.create(name="board")
    mallory.groups.add(Group.objects.create(name="staff-canteen"))
    form = {"title": "t", "system": "", "user_template": "Hi", "description": "", "category": "", "tags": "",
            "model": "", "params": "", "scope": "company", "message": "",
            **{k: v for k, v in _hostile(victim, board).items() if k != "groups"}}  # fmt: skip
    response = _client(mallory).post("/prompts/new/", form)
    assert response.status_code == 302, response.content[:300]
    prompt = Prompt.objects.get()
    assert prompt.owner_id == mallory.pk and prompt.use_count == 0
    # Company-wide needs a curator: the prompt is a draft waiting for review, published to nobody.
    assert prompt.published_version_id is None and prompt.review_requested_at is not None
    assert not prompt.groups.filter(pk=board.pk).exists()
    # Departments scope with a group mallory is not an editor of (nor a member): refused by the form.
    response = _client(mallory).post("/prompts/new/", {**form, "scope": "groups", "groups": [board.pk]})
    assert response.status_code == 200 and Prompt.objects.count() == 1
    # From the playground: a personal draft of the sender, whatever else it says.
    response = _client(mallory).post("/prompts/from-playground/", {"title": "p", "system": "s",
                                     "messages": '[{"role": "user", "content": "x"}]', **_hostile(victim, board)})  # fmt: skip
    assert response.status_code in (302, 200)
    assert set(Prompt.objects.values_list("owner_id", flat=True)) == {mallory.pk}
    assert not Prompt.objects.filter(published_version__isnull=False).exists()
    mallory.refresh_from_db()
    assert not mallory.is_staff and not mallory.groups.filter(pk=board.pk).exists()


def test_the_management_api_refuses_non_staff_writes_and_ignores_unknown_fields(
    mallory: Any, victim: Any, django_user_model: Any
) -> None:
    _, mallory_key = key_issue(name="m", user=mallory)
    rule = {"subject": "user:mallory", "metric": "requests", "window": "day", "limit": 10**9, "models": []}
    bearer = {"HTTP_AUTHORIZATION": f"Bearer {mallory_key}"}
    for method, url, body in (("POST", "/api/quotas/rules", rule), ("PATCH", "/api/quotas/rules/1", {"limit": 1}),
                              ("DELETE", "/api/quotas/rules/1", None)):  # fmt: skip
        response = Client().generic(method, url, data=b"" if body is None else __import__("json").dumps(body),
                                    content_type="application/json", **bearer)  # fmt: skip
        assert response.status_code == 403, (method, url, response.content)
        assert response.json() == {"detail": "The management API is for staff only."}
        # A signed-in non-staff session is refused the same way.
        session = _client(mallory).generic(method, url, data=b"{}", content_type="application/json")
        assert session.status_code in (403,), (method, url, session.status_code)
    assert not QuotaRule.objects.exists()
    # Staff may write; fields the schema does not name (an owner, a usage figure) are ignored.
    staff = django_user_model.objects.create_user("ops", is_staff=True)
    _, staff_key = key_issue(name="ops", user=staff)
    response = Client().post(
        "/api/quotas/rules", {**rule, "limit": 5, "id": 999, "used": -100, "owner": victim.pk, "user": victim.pk},
        content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {staff_key}",
    )  # fmt: skip
    assert response.status_code == 201, response.content
    created = QuotaRule.objects.get()
    assert created.pk != 999 and created.user_id == mallory.pk and created.limit == 5


def test_a_key_cannot_widen_itself_through_a_request_body(
    gateway: Any, alice_key: Any, fake: Any, ledger: Any
) -> None:
    """Fields in a gateway body that look like privileges are passed to nobody and change nothing."""
    import httpx

    user, plaintext = alice_key
    key = ApiKey.objects.get(user=user)
    key.allowed_models = ["gpt-4o-mini"]
    key.save()
    body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}], "allowed_models": ["gpt-4.1"],
            "user": "admin", "is_staff": True, "quota": 10**9, "scope": "company"}  # fmt: skip
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body,
                          headers={"Authorization": f"Bearer {plaintext}"})  # fmt: skip
    assert response.status_code == 403 and response.json()["error"]["code"] == "model_not_allowed"
    assert fake.requests == []
    key.refresh_from_db()
    assert key.allowed_models == ["gpt-4o-mini"]
    rows = ledger(1)
    assert [(r.user_id, r.key_id) for r in rows] == [(user.pk, key.pk)]
