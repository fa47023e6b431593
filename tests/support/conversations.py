"""Conversations with many stored messages, as the portal keeps them (sanitised HTML stored once)."""

from __future__ import annotations

from django.contrib.auth.models import User

from portal import markdown
from portal.models import Conversation, Message

ANSWER = "Here is some code:\n\n```python\nprint('hello')\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n$x^2$"


def conversation_of(user: User, pairs: int, title: str = "Long chat") -> Conversation:
    """A conversation of ``user`` with ``pairs`` question/answer pairs (2 × pairs messages)."""
    conversation = Conversation.objects.create(owner=user, title=title, model="gpt-4o-mini")
    html = markdown.render(ANSWER)
    rows = []
    for i in range(pairs):
        rows.append(Message(conversation=conversation, role="user", content=f"Question {i}?"))
        rows.append(Message(conversation=conversation, role="assistant", content=ANSWER, rendered_html=html,
                            model="gpt-4o-mini", prompt_tokens=10, completion_tokens=20))  # fmt: skip
    Message.objects.bulk_create(rows)
    return conversation
