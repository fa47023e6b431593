"""Opening a conversation: 500 messages in well under a second, with few SQL queries, and no
markdown rendered on the way (each answer's sanitised HTML was stored when it completed)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from portal import markdown
from portal.models import Conversation, Message

pytestmark = pytest.mark.django_db(transaction=True)


def conversation_of(user: User, pairs: int) -> Conversation:
    conversation = Conversation.objects.create(owner=user, title="Long chat", model="gpt-4o-mini")
    answer = (
        "Here is some code:\n\n```python\nprint('hello')\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n$x^2$"
    )
    html = markdown.render(answer)
    rows = []
    for i in range(pairs):
        rows.append(Message(conversation=conversation, role="user", content=f"Question {i}?"))
        rows.append(Message(conversation=conversation, role="assistant", content=answer, rendered_html=html,
                            model="gpt-4o-mini", prompt_tokens=10, completion_tokens=20))  # fmt: skip
    Message.objects.bulk_create(rows)
    return conversation


def open_page(client: Client, conversation: Conversation) -> tuple[float, int, str]:
    with CaptureQueriesContext(connection) as queries:
        started = time.perf_counter()
        response = client.get(f"/chat/c/{conversation.pk}/")
        elapsed = time.perf_counter() - started
    assert response.status_code == 200
    return elapsed, len(queries), response.content.decode()


def test_a_500_message_conversation_opens_in_under_a_second(
    alice: User, catalog: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = Client()
    client.force_login(alice)
    small, large = conversation_of(alice, 2), conversation_of(alice, 250)
    open_page(client, small)  # warm templates and the catalogue

    def no_markdown(text: str) -> str:
        raise AssertionError("opening a conversation must not render markdown")

    monkeypatch.setattr(markdown, "render", no_markdown)
    monkeypatch.setattr("portal.chat.render_markdown", no_markdown)
    _, small_queries, _ = open_page(client, small)
    elapsed, queries, html = open_page(client, large)

    assert html.count("<article") == 500 and html.count('<span class="nb">print</span>') == 250
    assert elapsed < 1.0, f"{elapsed:.3f} s"
    assert queries == small_queries, "the number of queries must not grow with the messages"
    assert queries <= 15, queries
