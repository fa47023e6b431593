"""`POST /v1/chat/completions` through the gateway with the official openai SDK."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI

HELLO = [{"role": "user", "content": "Hello there gateway"}]


def test_a_chat_completion_comes_back_as_from_the_provider(
    sdk: openai.OpenAI, fake: FakeOpenAI, ledger: Any
) -> None:
    completion = sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == "Echo: Hello there gateway"
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    # The provider saw its own key, never the gateway's, and the body as the client sent it.
    upstream = fake.requests[-1]
    assert upstream.headers["authorization"] == f"Bearer {fake.api_key}"
    assert upstream.body["messages"] == HELLO
    [event] = ledger(1)
    assert event.status == 200
    assert event.model == "gpt-4o-mini"
    assert event.provider == "local"
    assert event.prompt_tokens == completion.usage.prompt_tokens
    assert event.completion_tokens == completion.usage.completion_tokens
    assert event.streamed is False
    expected = (
        Decimal(completion.usage.prompt_tokens) * Decimal("0.15")
        + Decimal(completion.usage.completion_tokens) * Decimal("0.60")
    ) / Decimal(1_000_000)
    assert event.cost_usd == expected


def test_unknown_fields_survive_in_both_directions(gateway: Any, alice_key: Any, fake: FakeOpenAI) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {alice_key[1]}"},
        json={
            "model": "gpt-4o-mini",
            "messages": HELLO,
            "x_vendor_knob": {"deep": [1, 2]},
            "temperature": 0.3,
        },
    )
    assert response.status_code == 200
    assert response.json()["x_fake_extra"] == "kept"
    assert response.headers["x-request-id"].startswith("req_")
    assert fake.requests[-1].body["x_vendor_knob"] == {"deep": [1, 2]}
    assert fake.requests[-1].body["temperature"] == 0.3


def test_the_request_id_header_names_the_ledger_row(gateway: Any, alice_key: Any, ledger: Any) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {alice_key[1]}"},
        json={"model": "gpt-4o-mini", "messages": HELLO},
    )
    [event] = ledger(1)
    assert event.request_id == response.headers["x-request-id"]
    assert event.user.username == "alice"
    assert event.key is not None and event.key.name == "alice's key"


def test_a_stream_without_include_usage_gets_no_usage_chunk_but_is_accounted(
    sdk: openai.OpenAI, fake: FakeOpenAI, ledger: Any
) -> None:
    chunks: list[Any] = list(sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: Hello there gateway"
    assert all(c.choices for c in chunks), "the usage-only chunk the gateway asked for must be stripped"
    assert fake.requests[-1].body["stream_options"] == {"include_usage": True}
    [event] = ledger(1)
    assert event.streamed is True
    assert event.completion_tokens == 4
    assert event.tokens_estimated is False
    assert event.ttft_ms is not None


def test_a_stream_with_include_usage_keeps_the_usage_chunk(sdk: openai.OpenAI, ledger: Any) -> None:
    chunks = list(
        sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},  # type: ignore[arg-type]
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    [event] = ledger(1)
    assert event.completion_tokens == chunks[-1].usage.completion_tokens
    assert event.prompt_tokens == chunks[-1].usage.prompt_tokens


def test_a_stream_arrives_incrementally(gateway: Any, alice_key: Any, fake: FakeOpenAI) -> None:
    fake.behaviour(chunk_delay_ms=150, stream_words=4)
    arrivals = []
    import time

    started = time.perf_counter()
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", headers={"Authorization": f"Bearer {alice_key[1]}"},
        json={"model": "gpt-4o-mini", "messages": HELLO, "stream": True}, timeout=30,
    ) as response:  # fmt: skip
        for chunk in response.iter_raw():
            if b"content" in chunk:
                arrivals.append(time.perf_counter() - started)
    # Never buffered: the first words arrive long before the last.
    assert len(arrivals) >= 3
    assert arrivals[-1] - arrivals[0] > 0.3


def test_usage_is_counted_locally_when_the_provider_reports_none(
    sdk: openai.OpenAI, fake: FakeOpenAI, ledger: Any
) -> None:
    fake.behaviour(omit_usage=True, reply_text="one two three four five")
    list(sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True))  # type: ignore[arg-type]
    [event] = ledger(1)
    assert event.tokens_estimated is True
    assert event.completion_tokens == 5  # cl100k_base: one token per word here
    assert event.prompt_tokens > 0


def test_a_streamed_tool_call_survives(sdk: openai.OpenAI) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    stream = sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=tools,
        stream=True,  # type: ignore[arg-type]
    )
    arguments = ""
    finish = None
    for chunk in stream:
        if chunk.choices:
            for call in chunk.choices[0].delta.tool_calls or []:
                arguments += call.function.arguments or "" if call.function else ""
            finish = chunk.choices[0].finish_reason or finish
    assert arguments == '{"city":"Paris"}'
    assert finish == "tool_calls"


@pytest.mark.asyncio
async def test_the_async_client_works_too(asdk: openai.AsyncOpenAI, ledger: Any) -> None:
    completion = await asdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == "Echo: Hello there gateway"
    stream = await asdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True)  # type: ignore[arg-type]
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Echo: Hello there gateway"
