"""`/anthropic/v1/messages`: the official anthropic SDK works against the gateway, streaming too."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import pytest

from tests.fakes.openai_upstream import FakeOpenAI


@pytest.fixture
def claude(gateway: Any, alice_key: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"{gateway.url}/anthropic", api_key=alice_key[1], max_retries=0)


def test_messages_through_any_provider(claude: anthropic.Anthropic, fake: FakeOpenAI, ledger: Any) -> None:
    message = claude.messages.create(
        model="gpt-4o-mini",
        max_tokens=100,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello Claude"}],
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text == "Echo: Hello Claude"
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens > 0
    sent = fake.requests[-1].body
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["max_tokens"] == 100
    [event] = ledger(1)
    assert event.status == 200 and event.completion_tokens == message.usage.output_tokens


def test_streaming_with_the_sdk(claude: anthropic.Anthropic, ledger: Any) -> None:
    with claude.messages.stream(
        model="gpt-4o-mini", max_tokens=100, messages=[{"role": "user", "content": "Stream it"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Echo: Stream it"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0
    [event] = ledger(1)
    assert event.streamed and event.completion_tokens == final.usage.output_tokens


def test_tool_use_streams_as_input_json(claude: anthropic.Anthropic) -> None:
    tools = [
        {
            "name": "get_weather",
            "description": "Weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    with claude.messages.stream(model="gpt-4o-mini", max_tokens=100, tools=tools,
                                messages=[{"role": "user", "content": "weather in Paris?"}]) as stream:  # fmt: skip
        final = stream.get_final_message()
    [block] = [b for b in final.content if b.type == "tool_use"]
    assert block.name == "get_weather" and block.input == {"city": "Paris"}
    assert final.stop_reason == "tool_use"


def test_errors_are_anthropic_shaped(gateway: Any) -> None:
    bad = anthropic.Anthropic(base_url=f"{gateway.url}/anthropic", api_key="llmc-nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="gpt-4o-mini", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    response = httpx.post(f"{gateway.url}/anthropic/v1/messages", headers={"x-api-key": "llmc-nope"}, json={})
    assert response.json()["type"] == "error" and response.json()["error"]["type"] == "authentication_error"


def test_a_missing_max_tokens_is_a_400(gateway: Any, alice_key: Any) -> None:
    response = httpx.post(f"{gateway.url}/anthropic/v1/messages", headers={"x-api-key": alice_key[1]},
                          json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})  # fmt: skip
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
