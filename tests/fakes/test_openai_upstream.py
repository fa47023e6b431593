"""The fake upstream, driven by the official ``openai`` SDK (and raw httpx where bytes matter).

No Django here: these tests only need the fake server and the SDK.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI, AzureOpenAI, OpenAI

from tests.fakes.openai_upstream import (
    AZURE_CONTENT_FILTER_TRIGGER,
    FakeOpenAI,
    embedding_for,
)

ROOT = Path(__file__).resolve().parents[2]
AZURE_VERSION = "2024-10-21"
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeOpenAI) -> Iterator[FakeOpenAI]:
    server.reset()
    yield server
    server.reset()


@pytest.fixture
def client(fake: FakeOpenAI) -> Iterator[OpenAI]:
    with OpenAI(base_url=fake.base_url, api_key=fake.api_key, max_retries=0) as c:
        yield c


@pytest.fixture
def azure(fake: FakeOpenAI) -> Iterator[AzureOpenAI]:
    with AzureOpenAI(
        azure_endpoint=fake.azure_endpoint, api_key=fake.api_key, api_version=AZURE_VERSION, max_retries=0
    ) as c:
        yield c


def _user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def _raw_sse(fake: FakeOpenAI, path: str, body: dict[str, Any]) -> tuple[httpx.Response, list[bytes]]:
    """POST and collect the body exactly as the socket delivered it, chunk by chunk."""
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    with (
        httpx.Client(timeout=10) as http,
        http.stream("POST", f"{fake.base_url}{path}", json=body, headers=headers) as resp,
    ):
        chunks = list(resp.iter_raw())
    return resp, chunks


def _data_events(raw: bytes) -> list[Any]:
    """Split an SSE body on blank lines and decode the data lines (``[DONE]`` kept as a string)."""
    out: list[Any] = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        data = [line[len("data: ") :] for line in block.split("\n") if line.startswith("data: ")]
        assert len(data) == 1, block
        out.append(data[0] if data[0] == "[DONE]" else json.loads(data[0]))
    return out


# --------------------------------------------------------------------------------------------------
# Chat completions
# --------------------------------------------------------------------------------------------------


def test_chat_non_stream(fake: FakeOpenAI, client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=_user("hello fake world"), extra_body={"x_custom": 1}
    )
    assert raw.headers["content-type"] == "application/json"
    assert raw.headers["x-request-id"].startswith("req_")
    assert "openai-processing-ms" in raw.headers
    assert raw.headers["x-ratelimit-remaining-requests"] == "9999"
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "gpt-4o-mini-2024-07-18"
    assert completion.choices[0].message.content == "Echo: hello fake world"
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert usage.completion_tokens == 4  # one token per word
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details is not None
    assert completion.model_extra == {"x_fake_extra": "kept"}
    recorded = fake.last_request
    assert recorded.method == "POST" and recorded.path == "/v1/chat/completions"
    assert recorded.headers["authorization"] == f"Bearer {fake.api_key}"
    assert recorded.body["x_custom"] == 1  # unknown request fields are observable


def test_chat_non_stream_body_is_pretty_json(fake: FakeOpenAI) -> None:
    resp = httpx.post(
        f"{fake.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {fake.api_key}"},
        json={"model": "gpt-4o-mini", "messages": _user("hi")},
    )
    assert resp.text.startswith('{\n  "id": "chatcmpl-')
    assert int(resp.headers["content-length"]) == len(resp.content)


def test_chat_controls(fake: FakeOpenAI, client: OpenAI) -> None:
    fake.behaviour(reply_text="fixed reply here", cached_tokens=2, reasoning_tokens=5)
    completion = client.chat.completions.create(model="gpt-4o", messages=_user("ignored"))
    assert completion.choices[0].message.content == "fixed reply here"
    assert completion.model == "gpt-4o-2024-08-06"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3 + 5
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 2
    assert completion.usage.completion_tokens_details is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens == 5

    fake.reply_text = None
    fake.stream_words = 7
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=_user("a b"))
    assert completion.choices[0].message.content == "Echo: a b Echo: a b Echo:"


def test_chat_max_tokens_truncates(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=_user("one two three four five"), max_tokens=3
    )
    assert completion.choices[0].message.content == "Echo: one two"
    assert completion.choices[0].finish_reason == "length"
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=_user("one two three"), max_completion_tokens=2
    )
    assert completion.choices[0].message.content == "Echo: one"
    assert completion.choices[0].finish_reason == "length"


def test_chat_stream_without_usage(fake: FakeOpenAI, client: OpenAI) -> None:
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=_user("stream me"), stream=True)
    chunks = list(stream)
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks), "no usage chunk unless include_usage"
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "Echo: stream me"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1

    # The bytes: one SSE event per socket chunk, `data: ...\n\n`, and the terminator.
    resp, raw_chunks = _raw_sse(
        fake, "/chat/completions", {"model": "gpt-4o-mini", "messages": _user("a b c"), "stream": True}
    )
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert "content-length" not in resp.headers
    body = b"".join(raw_chunks)
    assert body.endswith(b"data: [DONE]\n\n")
    assert all(chunk.startswith(b"data: ") and chunk.endswith(b"\n\n") for chunk in raw_chunks)
    events = _data_events(body)
    assert len(raw_chunks) == len(events) == 1 + 4 + 1 + 1  # role, 4 words, finish, [DONE]
    assert all("usage" not in e for e in events[:-1])
    assert events[1]["choices"][0]["delta"] == {"content": "Echo:"}
    assert events[2]["choices"][0]["delta"] == {"content": " a"}


def test_chat_stream_with_usage(fake: FakeOpenAI, client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=_user("count my tokens"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == 4
    assert last.usage.prompt_tokens_details is not None
    assert all(c.usage is None for c in chunks[:-1])

    _, raw_chunks = _raw_sse(
        fake,
        "/chat/completions",
        {
            "model": "gpt-4o-mini",
            "messages": _user("x"),
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    events = _data_events(b"".join(raw_chunks))
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"] == [] and events[-2]["usage"]["total_tokens"] > 0
    for event in events[:-2]:
        assert "usage" in event and event["usage"] is None  # present, and null


def test_omit_usage_skips_the_usage_chunk(fake: FakeOpenAI, client: OpenAI) -> None:
    fake.omit_usage = True
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=_user("no usage"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert client.chat.completions.create(model="gpt-4o-mini", messages=_user("x")).usage is None


def test_tool_call_non_stream(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=_user("What's the weather in Paris?"), tools=[WEATHER_TOOL]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    assert calls[0].type == "function"
    assert calls[0].id.startswith("call_")
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}

    # Without "weather" the model answers in text; tool_choice "required" forces the call.
    assert (
        client.chat.completions.create(model="gpt-4o-mini", messages=_user("hello"), tools=[WEATHER_TOOL])
        .choices[0]
        .message.tool_calls
        is None
    )
    forced = client.chat.completions.create(
        model="gpt-4o-mini", messages=_user("hello"), tools=[WEATHER_TOOL], tool_choice="required"
    )
    assert forced.choices[0].finish_reason == "tool_calls"


def test_tool_call_stream(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=_user("weather please"),
        tools=[WEATHER_TOOL],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    first = deltas[0].tool_calls
    assert first is not None and first[0].id is not None and first[0].function is not None
    assert first[0].function.name == "get_weather"
    arguments = "".join(
        (d.tool_calls[0].function.arguments or "")
        for d in deltas
        if d.tool_calls and d.tool_calls[0].function
    )
    assert json.loads(arguments) == {"city": "Paris"}
    assert len([d for d in deltas if d.tool_calls]) > 2, "arguments arrive as several deltas"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage is not None

    # The SDK's stream helper accumulates the deltas into a complete tool call.
    with client.chat.completions.stream(
        model="gpt-4o-mini", messages=_user("weather?"), tools=[WEATHER_TOOL]
    ) as helper:
        final = helper.get_final_completion()
    tool_calls = final.choices[0].message.tool_calls
    assert tool_calls is not None
    assert json.loads(tool_calls[0].function.arguments) == {"city": "Paris"}


def test_tool_result_reply(client: OpenAI) -> None:
    messages: list[Any] = [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=[WEATHER_TOOL])
    assert completion.choices[0].message.content == "Tool result: sunny"


async def test_async_client_stream(fake: FakeOpenAI) -> None:
    async with AsyncOpenAI(base_url=fake.base_url, api_key=fake.api_key, max_retries=0) as aclient:
        stream = await aclient.chat.completions.create(
            model="gpt-4o-mini",
            messages=_user("async hello"),
            stream=True,
            stream_options={"include_usage": True},
        )
        text = ""
        usage = None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            usage = chunk.usage or usage
        assert text == "Echo: async hello"
        assert usage is not None and usage.completion_tokens == 3
        completion = await aclient.chat.completions.create(model="gpt-4o-mini", messages=_user("x"))
        assert completion.choices[0].message.content == "Echo: x"


def test_chunk_delay_and_latency_are_real(fake: FakeOpenAI) -> None:
    fake.behaviour(latency_ms=150, chunk_delay_ms=60)
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    body = {"model": "gpt-4o-mini", "messages": _user("a b"), "stream": True}
    arrivals: list[float] = []
    start = time.monotonic()
    with httpx.stream("POST", f"{fake.base_url}/chat/completions", json=body, headers=headers) as resp:
        first_byte = time.monotonic() - start
        for _ in resp.iter_raw():
            arrivals.append(time.monotonic())
    assert first_byte >= 0.14
    # Each event is its own HTTP chunk, and the server paces them: 5 gaps of 60 ms at least. (Total
    # duration rather than each gap, so a client stalled by a busy CI machine cannot fail it.)
    assert len(arrivals) == 1 + 3 + 1 + 1
    assert arrivals[-1] - arrivals[0] >= 5 * 0.06 * 0.9


def test_drop_mid_stream(fake: FakeOpenAI, client: OpenAI) -> None:
    fake.drop_mid_stream = 2
    received: list[Any] = []
    with pytest.raises((openai.APIConnectionError, httpx.TransportError)):
        for chunk in client.chat.completions.create(
            model="gpt-4o-mini", messages=_user("this will be cut short"), stream=True
        ):
            received.append(chunk)
    assert len(received) == 2
    fake.drop_mid_stream = None
    assert (
        len(list(client.chat.completions.create(model="gpt-4o-mini", messages=_user("ok"), stream=True))) == 4
    )


# --------------------------------------------------------------------------------------------------
# Legacy completions, embeddings, models
# --------------------------------------------------------------------------------------------------


def test_completions(client: OpenAI) -> None:
    completion = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="say this")
    assert completion.object == "text_completion"
    assert completion.choices[0].text == "Echo: say this"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 3

    long_prompt = " ".join(f"w{i}" for i in range(30))
    truncated = client.completions.create(model="gpt-3.5-turbo-instruct", prompt=long_prompt)
    assert truncated.choices[0].finish_reason == "length"  # max_tokens defaults to 16
    assert len(truncated.choices[0].text.split()) == 16

    chunks = list(
        client.completions.create(
            model="gpt-3.5-turbo-instruct",
            prompt="stream it",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Echo: stream it"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


def test_embeddings_base64_default_and_float(fake: FakeOpenAI, client: OpenAI) -> None:
    default = client.embeddings.create(model="text-embedding-3-small", input="hello")
    assert fake.last_request.body["encoding_format"] == "base64"  # what the SDK asks for by default
    floats = client.embeddings.create(model="text-embedding-3-small", input="hello", encoding_format="float")
    assert fake.last_request.body["encoding_format"] == "float"
    assert default.data[0].embedding == floats.data[0].embedding == embedding_for("hello")
    assert len(default.data[0].embedding) == 8
    assert abs(sum(v * v for v in default.data[0].embedding) - 1.0) < 1e-5
    assert default.usage.prompt_tokens == 1
    assert default.model == "text-embedding-3-small"

    many = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"], dimensions=16)
    assert [d.index for d in many.data] == [0, 1]
    assert many.data[1].embedding == embedding_for("b", 16)
    assert many.data[0].embedding != many.data[1].embedding

    raw = client.embeddings.create(model="text-embedding-3-small", input="hello", encoding_format="base64")
    encoded = raw.data[0].embedding
    assert isinstance(encoded, str)
    assert len(base64.b64decode(encoded)) == 8 * 4


def test_models(client: OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert "gpt-4o-mini" in ids and "text-embedding-3-small" in ids
    model = client.models.retrieve("gpt-4o-mini")
    assert model.id == "gpt-4o-mini" and model.object == "model" and model.owned_by == "system"
    with pytest.raises(openai.NotFoundError) as excinfo:
        client.models.retrieve("no-such-model")
    assert excinfo.value.code == "model_not_found"


# --------------------------------------------------------------------------------------------------
# Responses API
# --------------------------------------------------------------------------------------------------


def test_responses_non_stream(client: OpenAI) -> None:
    response = client.responses.create(model="gpt-4o-mini", input="respond to me", instructions="be brief")
    assert response.object == "response"
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.model == "gpt-4o-mini-2024-07-18"
    assert response.output_text == "Echo: respond to me"
    assert response.instructions == "be brief"
    usage = response.usage
    assert usage is not None
    assert usage.output_tokens == 4
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0


def test_responses_stream(fake: FakeOpenAI, client: OpenAI) -> None:
    events = list(client.responses.create(model="gpt-4o-mini", input="stream a response", stream=True))
    types = [e.type for e in events]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 4,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "Echo: stream a response"
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == deltas
    assert completed.response.usage is not None

    # Framing: `event: <type>` then `data: {...}`, and the event name matches the payload type.
    _, raw_chunks = _raw_sse(fake, "/responses", {"model": "gpt-4o-mini", "input": "x", "stream": True})
    for chunk in raw_chunks:
        event_line, data_line, *_ = chunk.decode().split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        assert json.loads(data_line[len("data: ") :])["type"] == event_line[len("event: ") :]


def test_responses_stream_helper_and_tools(client: OpenAI) -> None:
    with client.responses.stream(model="gpt-4o-mini", input="helper") as stream:
        final = stream.get_final_response()
    assert final.output_text == "Echo: helper"

    tools: Any = [
        {"type": "function", "name": "get_weather", "parameters": WEATHER_TOOL["function"]["parameters"]}
    ]
    response = client.responses.create(model="gpt-4o-mini", input="weather in Paris?", tools=tools)
    call = response.output[0]
    assert call.type == "function_call"
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    events = list(client.responses.create(model="gpt-4o-mini", input="weather?", tools=tools, stream=True))
    assert "response.function_call_arguments.delta" in [e.type for e in events]
    assert events[-1].type == "response.completed"


def test_responses_max_output_tokens(client: OpenAI) -> None:
    response = client.responses.create(model="gpt-4o-mini", input="a b c d e f", max_output_tokens=2)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "Echo: a"


# --------------------------------------------------------------------------------------------------
# Moderations and images
# --------------------------------------------------------------------------------------------------


def test_moderations(client: OpenAI) -> None:
    result = client.moderations.create(model="omni-moderation-latest", input=["I will kill it", "hello"])
    assert result.id.startswith("modr-")
    assert [r.flagged for r in result.results] == [True, False]
    assert result.results[0].categories.violence is True
    assert result.results[0].categories.hate is False
    assert result.results[0].category_scores.violence > 0.5


def test_images(fake: FakeOpenAI, client: OpenAI) -> None:
    urls = client.images.generate(model="dall-e-2", prompt="a cat", n=2)
    assert urls.data is not None and len(urls.data) == 2
    url = urls.data[0].url
    assert url is not None and url.startswith(fake.url)
    png = httpx.get(url)
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")

    b64 = client.images.generate(model="dall-e-3", prompt="a dog", response_format="b64_json")
    assert b64.data is not None and b64.data[0].b64_json is not None
    assert base64.b64decode(b64.data[0].b64_json).startswith(b"\x89PNG")
    assert b64.data[0].revised_prompt == "a dog"
    assert b64.usage is None


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def test_authentication_error(fake: FakeOpenAI) -> None:
    with (
        OpenAI(base_url=fake.base_url, api_key="sk-wrong-key-123456", max_retries=0) as bad,
        pytest.raises(openai.AuthenticationError) as excinfo,
    ):
        bad.chat.completions.create(model="gpt-4o-mini", messages=_user("hi"))
    assert excinfo.value.status_code == 401
    assert excinfo.value.code == "invalid_api_key"
    assert excinfo.value.type == "invalid_request_error"
    assert "sk-wrong-key-123456" not in excinfo.value.message  # the key is masked
    # The exact byte shape of an OpenAI error: 4-space indentation, all four fields.
    body = excinfo.value.response.text
    assert body.startswith('{\n    "error": {\n        "message": ')
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}


def test_not_found_error(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as excinfo:
        client.chat.completions.create(model="gpt-99", messages=_user("hi"))
    assert excinfo.value.code == "model_not_found"
    assert "gpt-99" in excinfo.value.message


def test_rate_limit_error_with_retry_after(fake: FakeOpenAI, client: OpenAI) -> None:
    fake.fail_next(429, retry_after=7)
    with pytest.raises(openai.RateLimitError) as excinfo:
        client.chat.completions.create(model="gpt-4o-mini", messages=_user("hi"))
    assert excinfo.value.code == "rate_limit_exceeded"
    assert excinfo.value.response.headers["retry-after"] == "7"
    assert excinfo.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    # Only the next request failed.
    assert client.chat.completions.create(model="gpt-4o-mini", messages=_user("hi")).choices


def test_fail_next_counts_and_retries(fake: FakeOpenAI) -> None:
    fake.fail_next(500, n=2, retry_after=0.01)
    with OpenAI(base_url=fake.base_url, api_key=fake.api_key, max_retries=2) as retrying:
        completion = retrying.chat.completions.create(model="gpt-4o-mini", messages=_user("retry me"))
    assert completion.choices[0].message.content == "Echo: retry me"
    assert len(fake.requests) == 3


def test_internal_server_error(fake: FakeOpenAI, client: OpenAI) -> None:
    fake.fail_next(500)
    with pytest.raises(openai.InternalServerError) as excinfo:
        client.chat.completions.create(model="gpt-4o-mini", messages=_user("hi"))
    assert excinfo.value.type == "server_error"
    fake.fail_next(
        503, body={"error": {"message": "custom", "type": "server_error", "param": None, "code": None}}
    )
    with pytest.raises(openai.InternalServerError) as excinfo:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert excinfo.value.message.endswith("custom")


def test_fail_next_match_only_hits_that_path(fake: FakeOpenAI, client: OpenAI) -> None:
    fake.fail_next(500, match="/embeddings")
    assert client.chat.completions.create(model="gpt-4o-mini", messages=_user("hi")).choices
    with pytest.raises(openai.InternalServerError):
        client.embeddings.create(model="text-embedding-3-small", input="x")


def test_bad_requests(fake: FakeOpenAI, client: OpenAI) -> None:
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    missing = httpx.post(f"{fake.base_url}/chat/completions", headers=headers, json={"model": "gpt-4o-mini"})
    assert missing.status_code == 400
    assert missing.json()["error"] == {
        "message": "Missing required parameter: 'messages'.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "missing_required_parameter",
    }
    broken = httpx.post(f"{fake.base_url}/chat/completions", headers=headers, content=b"{not json")
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"
    assert fake.last_request.body == b"{not json"
    unknown = httpx.get(f"{fake.base_url}/nope", headers=headers)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "Invalid URL (GET /v1/nope)"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-4o-mini", messages=_user("hi"), n=2)


# --------------------------------------------------------------------------------------------------
# Azure OpenAI
# --------------------------------------------------------------------------------------------------


def test_azure_chat_non_stream(fake: FakeOpenAI, azure: AzureOpenAI) -> None:
    raw = azure.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=_user("hello azure"))
    assert raw.headers["apim-request-id"]
    assert raw.headers["x-ms-region"]
    completion = raw.parse()
    assert completion.model == "gpt-4o-mini-2024-07-18"  # the underlying model, not the deployment
    assert completion.choices[0].message.content == "Echo: hello azure"
    extra = completion.model_extra or {}
    assert extra["prompt_filter_results"][0]["prompt_index"] == 0
    assert extra["prompt_filter_results"][0]["content_filter_results"]["jailbreak"] == {
        "filtered": False,
        "detected": False,
    }
    assert extra["x_fake_extra"] == "kept"
    choice_extra = completion.choices[0].model_extra or {}
    assert choice_extra["content_filter_results"]["hate"] == {"filtered": False, "severity": "safe"}
    recorded = fake.last_request
    assert recorded.flavour == "azure"
    assert recorded.path == "/openai/deployments/gpt-4o-mini/chat/completions"
    assert recorded.deployment == "gpt-4o-mini"
    assert recorded.api_version == AZURE_VERSION
    assert recorded.headers["api-key"] == fake.api_key
    assert "authorization" not in recorded.headers


def test_azure_chat_stream(azure: AzureOpenAI) -> None:
    chunks = list(
        azure.chat.completions.create(
            model="gpt-4o-mini",
            messages=_user("azure stream"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    first = chunks[0]
    assert first.choices == [] and first.id == "" and first.model == ""
    assert (first.model_extra or {})["prompt_filter_results"]
    content = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in content) == "Echo: azure stream"
    assert content[-1].choices[0].finish_reason == "stop"
    assert (content[1].choices[0].model_extra or {})["content_filter_results"]["violence"][
        "severity"
    ] == "safe"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.model == "gpt-4o-mini-2024-07-18" for c in content)


def test_azure_tools_embeddings_completions(fake: FakeOpenAI, azure: AzureOpenAI) -> None:
    tool = azure.chat.completions.create(
        model="gpt-4o-mini", messages=_user("weather?"), tools=[WEATHER_TOOL]
    )
    calls = tool.choices[0].message.tool_calls
    assert calls is not None and calls[0].type == "function"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}

    emb = azure.embeddings.create(model="text-embedding-3-small", input="azure")
    assert emb.data[0].embedding == embedding_for("azure")
    assert fake.last_request.deployment == "text-embedding-3-small"

    completion = azure.completions.create(model="gpt-35-turbo-instruct", prompt="legacy azure")
    assert completion.choices[0].text == "Echo: legacy azure"
    assert completion.model == "gpt-35-turbo-instruct"


def test_azure_api_version_handling(fake: FakeOpenAI) -> None:
    url = f"{fake.url}/openai/deployments/gpt-4o-mini/chat/completions"
    body = {"messages": _user("hi")}
    headers = {"api-key": fake.api_key}
    missing = httpx.post(url, json=body, headers=headers)
    assert missing.status_code == 404
    assert missing.content == b'{"error":{"code":"404","message": "Resource not found"}}'
    unsupported = httpx.post(url, params={"api-version": "2019-01-01"}, json=body, headers=headers)
    assert unsupported.status_code == 400
    assert unsupported.json() == {"error": {"code": "BadRequest", "message": "API version not supported"}}

    with (
        AzureOpenAI(
            azure_endpoint=fake.azure_endpoint, api_key=fake.api_key, api_version="1999-01-01", max_retries=0
        ) as old,
        pytest.raises(openai.BadRequestError),
    ):
        old.chat.completions.create(model="gpt-4o-mini", messages=_user("hi"))


def test_azure_errors(fake: FakeOpenAI, azure: AzureOpenAI) -> None:
    with (
        AzureOpenAI(
            azure_endpoint=fake.azure_endpoint, api_key="wrong", api_version=AZURE_VERSION, max_retries=0
        ) as bad,
        pytest.raises(openai.AuthenticationError) as auth,
    ):
        bad.chat.completions.create(model="gpt-4o-mini", messages=_user("hi"))
    assert auth.value.code == "401"

    with pytest.raises(openai.NotFoundError) as missing:
        azure.chat.completions.create(model="no-such-deployment", messages=_user("hi"))
    assert missing.value.code == "DeploymentNotFound"

    fake.fail_next(429, retry_after=3)
    with pytest.raises(openai.RateLimitError) as limited:
        azure.chat.completions.create(model="gpt-4o-mini", messages=_user("hi"))
    assert limited.value.response.headers["retry-after"] == "3"
    assert limited.value.response.headers["retry-after-ms"] == "3000"
    assert "ChatCompletions_Create" in limited.value.message

    with pytest.raises(openai.BadRequestError) as filtered:
        azure.chat.completions.create(
            model="gpt-4o-mini", messages=_user(f"please {AZURE_CONTENT_FILTER_TRIGGER}")
        )
    assert filtered.value.code == "content_filter"
    assert isinstance(filtered.value.body, dict)
    assert filtered.value.body["innererror"]["content_filter_result"]["violence"]["filtered"] is True


# --------------------------------------------------------------------------------------------------
# Housekeeping and the CLI
# --------------------------------------------------------------------------------------------------


def test_reset_and_unknown_controls(fake: FakeOpenAI, client: OpenAI) -> None:
    fake.behaviour(latency_ms=1, reply_text="x")
    fake.fail_next(500, n=3)
    client.models.list  # noqa: B018 - attribute access only, no request
    fake.reset()
    assert fake.requests == []
    assert fake.behaviour().reply_text is None and fake.latency_ms == 0
    assert client.chat.completions.create(model="gpt-4o-mini", messages=_user("clean")).choices
    with pytest.raises(TypeError):
        fake.behaviour(no_such_control=1)


def test_two_instances_are_independent() -> None:
    with FakeOpenAI(api_key="sk-one", reply_text="one") as one, FakeOpenAI(api_key="sk-two") as two:
        assert one.port != two.port
        with OpenAI(base_url=one.base_url, api_key="sk-one", max_retries=0) as c1:
            assert (
                c1.chat.completions.create(model="gpt-4o-mini", messages=_user("a"))
                .choices[0]
                .message.content
                == "one"
            )
        with OpenAI(base_url=two.base_url, api_key="sk-two", max_retries=0) as c2:
            assert (
                c2.chat.completions.create(model="gpt-4o-mini", messages=_user("a"))
                .choices[0]
                .message.content
                == "Echo: a"
            )
        assert len(one.requests) == 1 and len(two.requests) == 1


def test_cli_serves_in_the_foreground() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.openai_upstream",
            "--port",
            str(port),
            "--api-key",
            "sk-x",
            "--latency-ms",
            "5",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                resp = httpx.get(
                    f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer sk-x"}, timeout=1
                )
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else b""
                assert time.monotonic() < deadline, "CLI server did not come up"
                time.sleep(0.1)
        assert resp.status_code == 200 and resp.json()["object"] == "list"
        with OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-x", max_retries=0) as c:
            chunks = list(c.chat.completions.create(model="gpt-4o-mini", messages=_user("cli"), stream=True))
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == "Echo: cli"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
