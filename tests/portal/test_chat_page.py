"""Opening a conversation: 500 messages with the SQL queries of a 4-message one, and no markdown rendered on
the way (each answer's sanitised HTML was stored when it completed). How long it takes is measured
by `bench/portal.py`, not here."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from portal import markdown
from portal.models import Conversation
from tests.support.conversations import conversation_of

pytestmark = pytest.mark.django_db(transaction=True)


def open_page(client: Client, conversation: Conversation) -> tuple[int, str]:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"/chat/c/{conversation.pk}/")
    assert response.status_code == 200
    return len(queries), response.content.decode()


def test_a_500_message_conversation_opens_with_the_queries_of_a_short_one_and_no_markdown(
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
    small_queries, _ = open_page(client, small)
    queries, html = open_page(client, large)

    assert html.count("<article") == 500 and html.count('<span class="nb">print</span>') == 250
    assert queries == small_queries, "the number of queries must not grow with the messages"
    assert queries <= 15, queries
