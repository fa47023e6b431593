"""Chat over HTTP against the live server and the fake upstream: streaming, accounting, stop,
regenerate, edit, settings, sidebar actions, export, and the friendly errors."""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from portal.models import Conversation, Message
from quotas.models import QuotaRule, UsageEvent
from tests.fakes.openai_upstream import FakeOpenAI
from tests.portal.conftest import events

pytestmark = pytest.mark.django_db(transaction=True)


def start(
    client: httpx.Client, content: str = "Hello there", model: str = "gpt-4o-mini", **extra: str
) -> Conversation:
    response = client.post("/chat/new/", data={"content": content, "model": model, **extra})
    assert response.status_code == 302, response.text
    match = re.search(r"/chat/c/(\d+)/", response.headers["location"])
    assert match is not None
    pk = int(match[1])
    return Conversation.objects.get(pk=pk)


def pending(conversation: Conversation) -> Message:
    return conversation.messages.get(status=Message.Status.PENDING)


def stream(client: httpx.Client, message: Message) -> tuple[list[str], dict[str, Any]]:
    url = f"/chat/c/{message.conversation_id}/m/{message.pk}/stream/"
    deltas: list[str] = []
    done: dict[str, Any] = {}
    with client.stream("POST", url) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for kind, data in events(response):
            if kind == "delta":
                deltas.append(data["t"])
            elif kind == "done":
                done = data
    return deltas, done


def wait_for(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_a_turn_streams_token_by_token_and_is_accounted_like_an_api_call(
    alice_http: httpx.Client, alice: User, fake: FakeOpenAI
) -> None:
    fake.reply_text = "Here is **bold** and `code`."
    conversation = start(alice_http, "Say something", system_prompt="Be brief.")
    assert conversation.title == "Say something" and conversation.system_prompt == "Be brief."
    message = pending(conversation)
    deltas, done = stream(alice_http, message)

    assert len(deltas) >= 5 and "".join(deltas) == "Here is **bold** and `code`."
    message.refresh_from_db()
    assert message.status == "complete" and message.content == "Here is **bold** and `code`."
    assert "<strong>bold</strong>" in message.rendered_html and "<code>code</code>" in message.rendered_html
    assert message.prompt_tokens > 0 and message.completion_tokens == 5 and message.cost_usd > 0
    assert 'data-status="complete"' in done["html"] and "<strong>bold</strong>" in done["html"]
    # The system prompt and the history went to the provider.
    sent = fake.last_request.body["messages"]
    assert sent == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say something"}]
    # One ledger row, for alice, under the message's request id, with the same tokens and cost.
    event = wait_for(lambda: UsageEvent.objects.filter(request_id=message.request_id).first())
    assert event is not None and event.user_id == alice.pk and event.key_id is None
    assert (event.status, event.model, event.completion_tokens) == (200, "gpt-4o-mini", 5)
    assert event.cost_usd == message.cost_usd
    conversation.refresh_from_db()
    assert conversation.completion_tokens == 5 and conversation.cost_usd == message.cost_usd

    page = alice_http.get(f"/chat/c/{conversation.pk}/")
    assert page.status_code == 200 and "<strong>bold</strong>" in page.text
    assert "5 out tokens" in page.text


def test_an_answer_is_streamed_once(alice_http: httpx.Client) -> None:
    message = pending(start(alice_http))
    stream(alice_http, message)
    deltas, done = stream(alice_http, message)  # a second request gets the stored answer, no new call
    assert deltas == [] and done["status"] == "complete"
    assert Message.objects.get(pk=message.pk).request_id
    assert wait_for(lambda: UsageEvent.objects.count()) == 1
    time.sleep(0.3)
    assert UsageEvent.objects.count() == 1


def test_stop_keeps_the_partial_answer_and_charges_what_was_delivered(
    alice_http: httpx.Client, alice: User, fake: FakeOpenAI
) -> None:
    fake.behaviour(chunk_delay_ms=80, stream_words=40)
    message = pending(start(alice_http))
    got: list[str] = []
    with alice_http.stream("POST", f"/chat/c/{message.conversation_id}/m/{message.pk}/stream/") as response:
        for kind, data in events(response):
            if kind == "delta":
                got.append(data["t"])
            if len(got) == 4:
                break  # closing the response is what the browser's Stop does
    stopped = wait_for(lambda: Message.objects.filter(pk=message.pk, status="stopped").first())
    assert stopped is not None, Message.objects.get(pk=message.pk).status
    assert stopped.content.startswith("".join(got)) and 4 <= len(stopped.content.split()) < 40
    assert stopped.rendered_html
    event = wait_for(lambda: UsageEvent.objects.filter(request_id=stopped.request_id).first())
    assert event.user_id == alice.pk and event.status == 499 and event.error_kind == "client_disconnected"
    assert 0 < event.completion_tokens < 40
    page = alice_http.get(f"/chat/c/{message.conversation_id}/m/{message.pk}/")
    assert 'data-status="stopped"' in page.text and "stopped" in page.text


def test_regenerate_replaces_the_answer(alice_http: httpx.Client, fake: FakeOpenAI) -> None:
    conversation = start(alice_http, "First")
    answer = pending(conversation)
    stream(alice_http, answer)
    fake.reply_text = "A second opinion"
    response = alice_http.post(
        f"/chat/c/{conversation.pk}/m/{answer.pk}/regenerate/", headers={"HX-Request": "true"}
    )
    assert response.status_code == 200 and "data-stream-url" in response.text
    assert not Message.objects.filter(pk=answer.pk).exists()
    fresh = pending(conversation)
    _, done = stream(alice_http, fresh)
    assert done["status"] == "complete"
    assert [m.content for m in conversation.messages.all()] == ["First", "A second opinion"]


def test_editing_a_message_resends_it(alice_http: httpx.Client, fake: FakeOpenAI) -> None:
    conversation = start(alice_http, "Original question")
    stream(alice_http, pending(conversation))
    first = conversation.messages.get(role="user")
    response = alice_http.post(
        f"/chat/c/{conversation.pk}/m/{first.pk}/edit/", data={"content": "Better question"}
    )
    assert response.status_code == 200
    stream(alice_http, pending(conversation))
    assert [m.content for m in conversation.messages.all()] == ["Better question", "Echo: Better question"]
    assert fake.last_request.body["messages"][-1] == {"role": "user", "content": "Better question"}


def test_a_follow_up_sends_the_history_and_the_chosen_model(
    alice_http: httpx.Client, fake: FakeOpenAI
) -> None:
    conversation = start(alice_http, "One")
    stream(alice_http, pending(conversation))
    assert alice_http.post(f"/chat/c/{conversation.pk}/settings/", data={"model": "gpt-4o"}).text.count(
        "Saved."
    )
    response = alice_http.post(f"/chat/c/{conversation.pk}/send/", data={"content": "Two"})
    assert response.status_code == 200 and response.text.count("<article") == 2
    answer = pending(conversation)
    stream(alice_http, answer)
    answer.refresh_from_db()
    assert answer.model == "gpt-4o" and answer.content == "Echo: Two"
    assert [m["content"] for m in fake.last_request.body["messages"]] == ["One", "Echo: One", "Two"]


def test_the_model_picker_offers_only_models_the_user_may_use(alice_http: httpx.Client) -> None:
    page = alice_http.get("/chat/").text
    offered = re.findall(r'<option value="([^"]+)"', page)
    assert "gpt-4o-mini" in offered and "gpt-4o" in offered
    assert "gpt-4.1" not in offered  # restricted to the engineering group
    assert "text-embedding-3-small" not in offered and "dall-e-3" not in offered  # not chat models
    conversation = start(alice_http)
    refused = alice_http.post(f"/chat/c/{conversation.pk}/settings/", data={"model": "gpt-4.1"})
    assert "not available to you" in refused.text
    assert Conversation.objects.get(pk=conversation.pk).model == "gpt-4o-mini"
    assert alice_http.post("/chat/new/", data={"content": "x", "model": "gpt-4.1"}).status_code == 400


def test_a_quota_refusal_is_a_message_in_the_page(
    alice_http: httpx.Client, alice: User, fake: FakeOpenAI
) -> None:
    QuotaRule.objects.create(subject_type="user", user=alice, metric="requests", window="day", limit=1)
    first = start(alice_http, "One")
    stream(alice_http, pending(first))
    second = start(alice_http, "Two")
    message = pending(second)
    calls = len(fake.requests)
    deltas, done = stream(alice_http, message)
    assert deltas == [] and done["status"] == "error"
    assert "Your quota is used up" in done["error"] and "quota is used up" in done["html"]
    assert len(fake.requests) == calls  # refused before any provider call
    page = alice_http.get(f"/chat/c/{second.pk}/")
    assert page.status_code == 200 and "Your quota is used up" in page.text
    assert "1 of 1 left" not in page.text and "0 of 1 left" in page.text  # the remaining quota is shown


def test_a_provider_failure_is_a_message_in_the_page(alice_http: httpx.Client, fake: FakeOpenAI) -> None:
    fake.fail_next(500, n=10)
    conversation = start(alice_http)
    _, done = stream(alice_http, pending(conversation))
    assert done["status"] == "error" and "The model provider failed" in done["error"]
    page = alice_http.get(f"/chat/c/{conversation.pk}/")
    assert page.status_code == 200 and "The model provider failed" in page.text


def test_a_stream_that_breaks_off_keeps_what_came_and_says_so(
    alice_http: httpx.Client, fake: FakeOpenAI
) -> None:
    fake.behaviour(drop_mid_stream=4, stream_words=20)
    conversation = start(alice_http)
    message = pending(conversation)
    deltas, done = stream(alice_http, message)
    assert done["status"] == "error" and "provider" in done["error"]
    message.refresh_from_db()
    assert message.content == "".join(deltas) and message.content


def test_sidebar_rename_pin_search_and_delete(alice_http: httpx.Client, fake: FakeOpenAI) -> None:
    fake.reply_text = "The capital is Paris"
    one = start(alice_http, "Geography question")
    stream(alice_http, pending(one))
    two = start(alice_http, "Something else")
    hx = {"HX-Request": "true", "HX-Target": "conversation-list"}

    renamed = alice_http.post(f"/chat/c/{two.pk}/rename/", data={"title": "Renamed chat"}, headers=hx)
    assert "Renamed chat" in renamed.text and 'hx-swap-oob="true"' in renamed.text
    pinned = alice_http.post(f"/chat/c/{one.pk}/pin/", headers=hx)
    assert "Unpin" in pinned.text
    listing = alice_http.get("/chat/", headers=hx).text
    assert listing.index("Geography question") < listing.index("Renamed chat")  # pinned first

    by_title = alice_http.get("/chat/", params={"q": "renamed"}, headers=hx).text
    assert "Renamed chat" in by_title and "Geography" not in by_title
    by_content = alice_http.get("/chat/", params={"q": "paris"}, headers=hx).text
    assert "Geography question" in by_content and "Renamed chat" not in by_content

    deleted = alice_http.post(f"/chat/c/{two.pk}/delete/", headers={"HX-Request": "true"})
    assert deleted.status_code == 204 and deleted.headers["HX-Redirect"] == "/chat/"
    assert not Conversation.objects.filter(pk=two.pk).exists()


def test_export_as_markdown_and_json(alice_http: httpx.Client) -> None:
    conversation = start(alice_http, "Export me", system_prompt="Sys")
    stream(alice_http, pending(conversation))
    md = alice_http.get(f"/chat/c/{conversation.pk}/export.md")
    assert md.headers["content-disposition"] == 'attachment; filename="Export_me.md"'
    assert md.text.startswith("# Export me\n") and "## You\n\nExport me" in md.text
    assert "## Assistant (gpt-4o-mini)\n\nEcho: Export me" in md.text and "## System prompt\n\nSys" in md.text
    data = json.loads(alice_http.get(f"/chat/c/{conversation.pk}/export.json").text)
    assert [m["content"] for m in data["messages"]] == ["Export me", "Echo: Export me"]
    assert data["system_prompt"] == "Sys" and data["messages"][1]["completion_tokens"] == 3
    assert alice_http.get(f"/chat/c/{conversation.pk}/export.html").status_code == 404


def test_another_user_gets_404_on_every_conversation_url(
    alice_http: httpx.Client, bob_http: httpx.Client, fake: FakeOpenAI
) -> None:
    conversation = start(alice_http, "Private")
    answer = pending(conversation)
    question = conversation.messages.get(role="user")
    c, a, q = conversation.pk, answer.pk, question.pk
    gets = [f"/chat/c/{c}/", f"/chat/c/{c}/export.md", f"/chat/c/{c}/export.json", f"/chat/c/{c}/m/{a}/"]
    posts = [
        (f"/chat/c/{c}/send/", {"content": "hi"}),
        (f"/chat/c/{c}/settings/", {"model": "gpt-4o"}),
        (f"/chat/c/{c}/rename/", {"title": "mine"}),
        (f"/chat/c/{c}/pin/", {}),
        (f"/chat/c/{c}/delete/", {}),
        (f"/chat/c/{c}/m/{a}/stream/", {}),
        (f"/chat/c/{c}/m/{a}/regenerate/", {}),
        (f"/chat/c/{c}/m/{q}/edit/", {"content": "changed"}),
    ]
    for url in gets:
        assert bob_http.get(url).status_code == 404, url
    for url, data in posts:
        assert bob_http.post(url, data=data).status_code == 404, url
    # Nothing changed, nothing was sent upstream, and bob's sidebar and search do not show it.
    conversation.refresh_from_db()
    assert (conversation.title, conversation.pinned, conversation.model) == ("Private", False, "gpt-4o-mini")
    assert [m.content for m in conversation.messages.all()] == ["Private", ""]
    assert Message.objects.get(pk=a).status == "pending" and fake.requests == []
    assert f"/chat/c/{c}/" not in bob_http.get("/chat/", params={"q": "Private"}).text
    # Alice's own session still can.
    assert alice_http.get(f"/chat/c/{c}/").status_code == 200


def test_posts_without_a_csrf_token_are_refused(alice_http: httpx.Client) -> None:
    conversation = start(alice_http)
    message = pending(conversation)
    del alice_http.headers["X-CSRFToken"]
    assert alice_http.post(f"/chat/c/{conversation.pk}/m/{message.pk}/stream/").status_code == 403
    assert alice_http.post(f"/chat/c/{conversation.pk}/rename/", data={"title": "x"}).status_code == 403
    assert alice_http.post("/chat/new/", data={"content": "x"}).status_code == 403


def test_a_slow_model_gets_heartbeats(
    alice_http: httpx.Client, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("portal.streaming.HEARTBEAT_SECONDS", 0.1)
    fake.latency_ms = 600
    message = pending(start(alice_http))
    with alice_http.stream("POST", f"/chat/c/{message.conversation_id}/m/{message.pk}/stream/") as response:
        lines = list(response.iter_lines())
    assert ": ping" in lines and lines.index(": ping") < lines.index("event: delta")
    assert Message.objects.get(pk=message.pk).status == "complete"


def test_an_answer_whose_server_died_is_shown_as_interrupted(
    alice_http: httpx.Client, fake: FakeOpenAI
) -> None:
    conversation = start(alice_http)
    stuck = pending(conversation)
    an_hour_ago = timezone.now() - timedelta(hours=1)
    Message.objects.filter(pk=stuck.pk).update(status="streaming", created_at=an_hour_ago)
    page = alice_http.get(f"/chat/c/{conversation.pk}/").text
    assert "This answer was interrupted." in page and 'data-status="stopped"' in page
    assert (
        alice_http.post(f"/chat/c/{conversation.pk}/send/", data={"content": "Again"}).text.count("<article")
        == 2
    )
