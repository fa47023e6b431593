"""The admin console sees conversations' metadata and usage, never what employees wrote."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from portal.models import Conversation, Message

pytestmark = pytest.mark.django_db


def test_an_admin_sees_a_conversations_usage_but_not_its_messages(alice: Any, django_user_model: Any) -> None:
    conversation = Conversation.objects.create(owner=alice, title="Salary talk", model="gpt-4o-mini")
    Message.objects.create(conversation=conversation, role="user", content="my secret salary question")
    root = django_user_model.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.force_login(root)
    page = client.get(f"/admin/portal/conversation/{conversation.pk}/change/")
    assert page.status_code == 200 and b"gpt-4o-mini" in page.content
    assert b"my secret salary question" not in page.content
    assert b'name="_save"' not in page.content  # read-only: nothing to save
    assert client.get("/admin/portal/message/").status_code == 404  # messages are not in the console
    assert (
        client.post(f"/admin/portal/conversation/{conversation.pk}/delete/", {"post": "yes"}).status_code
        == 302
    )
    assert not Message.objects.exists()  # an erasure request: the conversation and its messages go
