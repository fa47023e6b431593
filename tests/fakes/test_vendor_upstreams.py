"""The Anthropic, Gemini and Bedrock fakes, driven by the vendors' official SDKs.

* Anthropic: the ``anthropic`` SDK (``Anthropic``, and ``AnthropicBedrock`` against the Bedrock fake).
* Gemini: the ``google-genai`` SDK (Developer API and Vertex AI), raw httpx where bytes matter.
* Bedrock: ``boto3`` (SigV4 signing, the restJson error parser and the event-stream decoder are
  botocore's own), and ``botocore.eventstream`` to decode raw stream bytes.

No Django here: these tests only need the fake servers and the SDKs.
"""

from __future__ import annotations

import base64
import datetime
import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from tests.fakes.anthropic_upstream import FakeAnthropic, plan_text
from tests.fakes.gemini_upstream import FakeGemini, embedding_for

# boto3 and google-genai are test-only SDKs that the project's dependencies do not pin: without
# them their sections skip (with the reason) instead of breaking collection.
try:
    from google import genai
    from google.genai import errors as genai_errors
    from google.genai import types as genai_types
    from google.oauth2.credentials import Credentials as GoogleCredentials
except ImportError as exc:  # pragma: no cover - depends on the environment
    _MISSING_GENAI = f"google-genai is not installed ({exc})"
else:
    _MISSING_GENAI = ""
try:
    import boto3
    import botocore.exceptions
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.config import Config
    from botocore.credentials import Credentials
    from botocore.eventstream import EventStreamBuffer

    from tests.fakes.bedrock_upstream import FakeBedrock, event_message
except ImportError as exc:  # pragma: no cover - depends on the environment
    _MISSING_AWS = f"boto3/botocore is not installed ({exc})"
else:
    _MISSING_AWS = ""
needs_genai = pytest.mark.skipif(bool(_MISSING_GENAI), reason=_MISSING_GENAI or "-")
needs_aws = pytest.mark.skipif(bool(_MISSING_AWS), reason=_MISSING_AWS or "-")

CLAUDE = "claude-sonnet-4-20250514"
GEMINI = "gemini-2.5-flash"
BEDROCK_CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"
PNG_1X1 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
ANTHROPIC_WEATHER_TOOL: Any = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


# ==================================================================================================
# Shared planning
# ==================================================================================================


def test_plan_text_cuts_at_stop_sequence_then_max_tokens() -> None:
    assert plan_text("Echo: a b. c", None, None, ["."]).text == "Echo: a b"
    assert plan_text("Echo: a b. c", None, None, ["."]).reason == "stop_sequence"
    assert plan_text("Echo: a b. c", None, 2, ["."]).reason == "max_tokens"
    assert plan_text("Echo: a b c", None, 2).pieces == ["Echo:", " a"]
    assert plan_text("Echo: a", 4, None).pieces == ["Echo:", " a", " Echo:", " a"]
    assert plan_text("x STOP y", None, None, ["zz", "STOP"]).stop_sequence == "STOP"


# ==================================================================================================
# Anthropic
# ==================================================================================================


@pytest.fixture(scope="module")
def anthropic_server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def afake(anthropic_server: FakeAnthropic) -> Iterator[FakeAnthropic]:
    anthropic_server.reset()
    yield anthropic_server
    anthropic_server.reset()


@pytest.fixture
def aclient(afake: FakeAnthropic) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=afake.url, api_key=afake.api_key, max_retries=0) as client:
        yield client


def _anthropic_headers(fake: FakeAnthropic) -> dict[str, str]:
    return {"x-api-key": fake.api_key, "anthropic-version": "2023-06-01"}


def _sse_blocks(raw: bytes, sep: bytes = b"\n\n") -> list[bytes]:
    return [block for block in raw.split(sep) if block]


def test_anthropic_message_non_stream(afake: FakeAnthropic, aclient: anthropic.Anthropic) -> None:
    raw = aclient.messages.with_raw_response.create(
        model=CLAUDE,
        max_tokens=64,
        system="Be brief.",
        messages=[{"role": "user", "content": "hello fake world"}],
    )
    assert raw.headers["content-type"] == "application/json"
    assert raw.headers["request-id"].startswith("req_011C")
    assert "anthropic-ratelimit-requests-remaining" in raw.headers
    message = raw.parse()
    assert message.id.startswith("msg_01") and message.type == "message" and message.role == "assistant"
    assert message.model == CLAUDE
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [
        ("text", "Echo: hello fake world")
    ]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    usage = message.usage
    assert usage.output_tokens == 4  # one token per word
    assert usage.input_tokens == 3 + 2 + 3 + 3  # overhead + system words + message overhead + words
    assert usage.cache_creation_input_tokens == 0 and usage.cache_read_input_tokens == 0
    recorded = afake.last_request
    assert recorded.method == "POST" and recorded.path == "/v1/messages"
    assert recorded.body["max_tokens"] == 64 and recorded.body["system"] == "Be brief."
    assert recorded.headers["anthropic-version"]


def test_anthropic_body_bytes_and_x_api_key(afake: FakeAnthropic) -> None:
    resp = httpx.post(
        f"{afake.url}/v1/messages",
        headers=_anthropic_headers(afake),
        json={"model": CLAUDE, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert resp.status_code == 200
    assert resp.content.startswith(b'{"model":"claude-sonnet-4-20250514","id":"msg_01')
    assert int(resp.headers["content-length"]) == len(resp.content)
    body = resp.json()
    assert list(body) == ["model", "id", "type", "role", "content", "stop_reason", "stop_sequence", "usage"]
    assert list(body["usage"]) == [
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "cache_creation",
        "output_tokens",
        "service_tier",
    ]


def test_anthropic_max_tokens_and_stop_sequences(aclient: anthropic.Anthropic) -> None:
    cut = aclient.messages.create(
        model=CLAUDE, max_tokens=2, messages=[{"role": "user", "content": "one two three"}]
    )
    assert cut.content[0].text == "Echo: one"  # type: ignore[union-attr]
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 2
    stopped = aclient.messages.create(
        model=CLAUDE,
        max_tokens=50,
        stop_sequences=["END", "three"],
        messages=[{"role": "user", "content": "one two three four"}],
    )
    assert stopped.content[0].text == "Echo: one two "  # type: ignore[union-attr]
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "three"


def test_anthropic_max_tokens_is_required(afake: FakeAnthropic) -> None:
    resp = httpx.post(
        f"{afake.url}/v1/messages",
        headers=_anthropic_headers(afake),
        json={"model": CLAUDE, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert resp.status_code == 400
    body = resp.json()
    assert body["type"] == "error"
    assert body["error"] == {"type": "invalid_request_error", "message": "max_tokens: Field required"}
    assert body["request_id"].startswith("req_")


def test_anthropic_headers_checked(afake: FakeAnthropic) -> None:
    payload = {"model": CLAUDE, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    missing_key = httpx.post(
        f"{afake.url}/v1/messages", headers={"anthropic-version": "2023-06-01"}, json=payload
    )
    assert missing_key.status_code == 401
    assert missing_key.json()["error"] == {
        "type": "authentication_error",
        "message": "x-api-key header is required",
    }
    wrong_key = httpx.post(
        f"{afake.url}/v1/messages",
        headers={"x-api-key": "nope", "anthropic-version": "2023-06-01"},
        json=payload,
    )
    assert wrong_key.status_code == 401 and wrong_key.json()["error"]["message"] == "invalid x-api-key"
    no_version = httpx.post(f"{afake.url}/v1/messages", headers={"x-api-key": afake.api_key}, json=payload)
    assert no_version.status_code == 400
    assert no_version.json()["error"]["message"] == "anthropic-version: header is required"


def test_anthropic_stream_raw_framing(afake: FakeAnthropic) -> None:
    with (
        httpx.Client(timeout=10) as http,
        http.stream(
            "POST",
            f"{afake.url}/v1/messages",
            headers=_anthropic_headers(afake),
            json={
                "model": CLAUDE,
                "max_tokens": 50,
                "stream": True,
                "messages": [{"role": "user", "content": "a b"}],
            },
        ) as resp,
    ):
        assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
        raw = b"".join(resp.iter_raw())
    blocks = _sse_blocks(raw)
    assert raw.endswith(b"\n\n")
    names = [b.split(b"\n")[0].decode() for b in blocks]
    assert names == [
        "event: message_start",
        "event: content_block_start",
        "event: ping",
        "event: content_block_delta",
        "event: content_block_delta",
        "event: content_block_delta",
        "event: content_block_stop",
        "event: message_delta",
        "event: message_stop",
    ]
    assert blocks[2] == b'event: ping\ndata: {"type": "ping"}'
    assert blocks[1] == (
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"text","text":""}}'
    )
    assert blocks[4] == (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":" a"}}'
    )
    start = json.loads(blocks[0].split(b"data: ", 1)[1])
    assert start["message"]["content"] == [] and start["message"]["stop_reason"] is None
    delta = json.loads(blocks[7].split(b"data: ", 1)[1])
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 3
    assert blocks[8] == b'event: message_stop\ndata: {"type":"message_stop"}'


def test_anthropic_stream_true_events(aclient: anthropic.Anthropic) -> None:
    stream = aclient.messages.create(
        model=CLAUDE, max_tokens=50, stream=True, messages=[{"role": "user", "content": "hello there"}]
    )
    events = list(stream)
    # The SDK drops ping events itself.
    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    texts = [e.delta.text for e in events if e.type == "content_block_delta"]  # type: ignore[union-attr]
    assert texts == ["Echo:", " hello", " there"]


def test_anthropic_messages_stream_text(afake: FakeAnthropic, aclient: anthropic.Anthropic) -> None:
    afake.behaviour(chunk_delay_ms=5)
    with aclient.messages.stream(
        model=CLAUDE, max_tokens=3, messages=[{"role": "user", "content": "alpha beta gamma delta"}]
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert pieces == ["Echo:", " alpha", " beta"]
    assert final.content[0].text == "Echo: alpha beta"  # type: ignore[union-attr]
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 3


def test_anthropic_messages_stream_tool_use(aclient: anthropic.Anthropic) -> None:
    with aclient.messages.stream(
        model=CLAUDE,
        max_tokens=100,
        tools=[ANTHROPIC_WEATHER_TOOL],
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    ) as stream:
        partials = [e.partial_json for e in stream if e.type == "input_json"]
        final = stream.get_final_message()
    assert "".join(partials) == '{"city": "Paris"}'
    assert final.stop_reason == "tool_use"
    block = final.content[0]
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == {"city": "Paris"}
    assert block.id.startswith("toolu_01")


def test_anthropic_tool_result_and_image(afake: FakeAnthropic, aclient: anthropic.Anthropic) -> None:
    message = aclient.messages.create(
        model=CLAUDE,
        max_tokens=100,
        tools=[ANTHROPIC_WEATHER_TOOL],
        messages=[
            {"role": "user", "content": "weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "toolu_01x", "name": "get_weather", "input": {"city": "Paris"}}
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01x", "content": "15 degrees and sunny"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG_1X1},
                    },
                ],
            },
        ],
    )
    assert message.content[0].text == "Tool result: 15 degrees and sunny"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    bmp: Any = {"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": PNG_1X1}}
    with pytest.raises(anthropic.BadRequestError) as bad:
        aclient.messages.create(model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": [bmp]}])
    assert "media_type" in bad.value.body["error"]["message"]  # type: ignore[index]


def test_anthropic_tool_choice_forces_and_none_disables(aclient: anthropic.Anthropic) -> None:
    forced = aclient.messages.create(
        model=CLAUDE,
        max_tokens=50,
        tools=[ANTHROPIC_WEATHER_TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "hi"}],
    )
    assert forced.stop_reason == "tool_use"
    disabled = aclient.messages.create(
        model=CLAUDE,
        max_tokens=50,
        tools=[ANTHROPIC_WEATHER_TOOL],
        tool_choice={"type": "none"},
        messages=[{"role": "user", "content": "weather?"}],
    )
    assert disabled.stop_reason == "end_turn"


def test_anthropic_cache_usage(afake: FakeAnthropic, aclient: anthropic.Anthropic) -> None:
    afake.behaviour(cache_read_tokens=4, cache_write_tokens=2)
    message = aclient.messages.create(
        model=CLAUDE, max_tokens=20, messages=[{"role": "user", "content": "a b c d e"}]
    )
    assert message.usage.cache_read_input_tokens == 4
    assert message.usage.cache_creation_input_tokens == 2
    assert message.usage.input_tokens == (3 + 3 + 5) - 6
    with aclient.messages.stream(
        model=CLAUDE, max_tokens=20, messages=[{"role": "user", "content": "a b c d e"}]
    ) as s:
        final = s.get_final_message()
    assert final.usage.cache_read_input_tokens == 4


@pytest.mark.parametrize(
    ("status", "exc", "error_type"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (401, anthropic.AuthenticationError, "authentication_error"),
        (403, anthropic.PermissionDeniedError, "permission_error"),
        (404, anthropic.NotFoundError, "not_found_error"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.APIStatusError, "overloaded_error"),
    ],
)
def test_anthropic_errors(
    afake: FakeAnthropic, aclient: anthropic.Anthropic, status: int, exc: type[Exception], error_type: str
) -> None:
    afake.fail_next(status)
    with pytest.raises(exc) as raised:
        aclient.messages.create(model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    error = raised.value
    assert isinstance(error, anthropic.APIStatusError)
    assert error.status_code == status
    assert error.body["type"] == "error"  # type: ignore[index]
    assert error.body["error"]["type"] == error_type  # type: ignore[index]
    if status == 529:
        assert isinstance(error, anthropic.OverloadedError)
        assert error.body["error"]["message"] == "Overloaded"  # type: ignore[index]
    # Only one failure was queued: the next call succeeds.
    aclient.messages.create(model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": "hi"}])


def test_anthropic_rate_limit_retry_after(afake: FakeAnthropic, aclient: anthropic.Anthropic) -> None:
    afake.fail_next(429, retry_after=3)
    with pytest.raises(anthropic.RateLimitError) as raised:
        aclient.messages.create(model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert raised.value.response.headers["retry-after"] == "3"
    assert raised.value.response.headers["anthropic-ratelimit-requests-remaining"] == "0"


def test_anthropic_wrong_key_and_unknown_model(afake: FakeAnthropic) -> None:
    with (
        anthropic.Anthropic(base_url=afake.url, api_key="sk-wrong", max_retries=0) as bad,
        pytest.raises(anthropic.AuthenticationError),
    ):
        bad.messages.create(model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    with (
        anthropic.Anthropic(base_url=afake.url, api_key=afake.api_key, max_retries=0) as client,
        pytest.raises(anthropic.NotFoundError) as raised,
    ):
        client.messages.create(
            model="claude-nope", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert raised.value.body["error"]["message"] == "model: claude-nope"  # type: ignore[index]


def test_anthropic_error_mid_stream_and_drop(afake: FakeAnthropic, aclient: anthropic.Anthropic) -> None:
    afake.behaviour(error_mid_stream=3)
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as raised:
        for event in aclient.messages.create(
            model=CLAUDE, max_tokens=50, stream=True, messages=[{"role": "user", "content": "a b c"}]
        ):
            seen.append(event.type)
    assert seen == ["message_start", "content_block_start"]  # the third event was the ping
    assert raised.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
    afake.behaviour(error_mid_stream=None, drop_mid_stream=2)
    with pytest.raises(Exception) as dropped:  # the SDK surfaces the transport error as is
        list(
            aclient.messages.create(
                model=CLAUDE, max_tokens=50, stream=True, messages=[{"role": "user", "content": "a b c"}]
            )
        )
    assert "RemoteProtocolError" in type(dropped.value).__name__ or isinstance(
        dropped.value, anthropic.APIError
    )


def test_anthropic_latency_reply_text_models_count(
    afake: FakeAnthropic, aclient: anthropic.Anthropic
) -> None:
    afake.behaviour(latency_ms=150, reply_text="fixed words here")
    started = time.monotonic()
    message = aclient.messages.create(
        model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": "x"}]
    )
    assert time.monotonic() - started >= 0.15
    assert message.content[0].text == "fixed words here"  # type: ignore[union-attr]
    afake.behaviour(latency_ms=0)
    ids = [m.id for m in aclient.models.list()]
    assert CLAUDE in ids
    counted = aclient.messages.count_tokens(model=CLAUDE, messages=[{"role": "user", "content": "one two"}])
    assert counted.input_tokens == 3 + 3 + 2
    assert len(afake.requests) == 3
    afake.reset()
    assert afake.requests == [] and afake.reply_text is None


# ==================================================================================================
# Gemini
# ==================================================================================================


@pytest.fixture(scope="module")
def gemini_server() -> Iterator[FakeGemini]:
    with FakeGemini() as fake:
        yield fake


@pytest.fixture
def gfake(gemini_server: FakeGemini) -> Iterator[FakeGemini]:
    gemini_server.reset()
    yield gemini_server
    gemini_server.reset()


def _genai(fake: FakeGemini, api_key: str | None = None, version: str = "v1beta") -> genai.Client:
    return genai.Client(
        api_key=api_key or fake.api_key,
        http_options={"base_url": fake.url, "api_version": version, "retry_options": {"attempts": 1}},
    )


@pytest.fixture
def gclient(gfake: FakeGemini) -> genai.Client:
    return _genai(gfake)


def _vertex(fake: FakeGemini, token: str | None = None, version: str = "v1") -> genai.Client:
    return genai.Client(
        vertexai=True,
        project="fake-project",
        location="us-central1",
        credentials=GoogleCredentials(token=token or fake.access_token),
        http_options={"base_url": fake.url, "api_version": version, "retry_options": {"attempts": 1}},
    )


def _weather_tools() -> list[Any]:
    declaration = genai_types.FunctionDeclaration(
        name="get_weather",
        description="Current weather for a city",
        parameters=genai_types.Schema(
            type=genai_types.Type.OBJECT,
            properties={"city": genai_types.Schema(type=genai_types.Type.STRING)},
        ),
    )
    return [genai_types.Tool(function_declarations=[declaration])]


def _no_afc() -> Any:
    return genai_types.AutomaticFunctionCallingConfig(disable=True)


@needs_genai
def test_gemini_generate_content(gfake: FakeGemini, gclient: genai.Client) -> None:
    response = gclient.models.generate_content(
        model=GEMINI,
        contents="hello fake world",
        config=genai_types.GenerateContentConfig(system_instruction="Be brief.", temperature=0.2, top_p=0.9),
    )
    assert response.text == "Echo: hello fake world"
    candidate = response.candidates[0]  # type: ignore[index]
    assert candidate.finish_reason == genai_types.FinishReason.STOP
    usage = response.usage_metadata
    assert usage is not None
    assert (
        usage.prompt_token_count == 5 and usage.candidates_token_count == 4 and usage.total_token_count == 9
    )
    assert usage.cached_content_token_count is None
    assert response.model_version == GEMINI and response.response_id
    recorded = gfake.last_request
    assert recorded.path == f"/v1beta/models/{GEMINI}:generateContent"
    assert recorded.headers["x-goog-api-key"] == gfake.api_key
    assert recorded.body["systemInstruction"]["parts"] == [{"text": "Be brief."}]
    assert recorded.body["generationConfig"] == {"temperature": 0.2, "topP": 0.9}


@needs_genai
def test_gemini_body_bytes_and_query_key(gfake: FakeGemini) -> None:
    resp = httpx.post(
        f"{gfake.url}/v1beta/models/{GEMINI}:generateContent",
        params={"key": gfake.api_key},
        json={"contents": [{"role": "user", "parts": [{"text": "a <b> & c"}]}]},
    )
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json; charset=UTF-8"
    assert resp.text.startswith('{\n  "candidates": [\n    {\n      "content": {\n        "parts": [')
    assert resp.text.endswith("}\n")
    assert "\\u003cb\\u003e \\u0026 c" in resp.text  # Google escapes <, > and &
    body = resp.json()
    assert list(body) == ["candidates", "usageMetadata", "modelVersion", "responseId"]
    assert body["candidates"][0]["index"] == 0
    assert body["usageMetadata"]["promptTokensDetails"] == [{"modality": "TEXT", "tokenCount": 4}]


@needs_genai
def test_gemini_default_api_version_v1(gfake: FakeGemini) -> None:
    client = genai.Client(
        api_key=gfake.api_key, http_options={"base_url": gfake.url, "retry_options": {"attempts": 1}}
    )
    assert client.models.generate_content(model=GEMINI, contents="hi").text == "Echo: hi"
    assert gfake.last_request.path == f"/v1/models/{GEMINI}:generateContent"


@needs_genai
def test_gemini_stream_sdk(gfake: FakeGemini, gclient: genai.Client) -> None:
    chunks = list(gclient.models.generate_content_stream(model=GEMINI, contents="alpha beta"))
    assert [c.text for c in chunks] == ["Echo:", " alpha", " beta", None]
    assert chunks[-1].candidates[0].finish_reason == genai_types.FinishReason.STOP  # type: ignore[index]
    assert chunks[-1].usage_metadata.candidates_token_count == 3  # type: ignore[union-attr]
    assert len({c.response_id for c in chunks}) == 1
    assert gfake.last_request.query == {"alt": "sse"}


@needs_genai
def test_gemini_stream_raw_framing(gfake: FakeGemini) -> None:
    with (
        httpx.Client(timeout=10) as http,
        http.stream(
            "POST",
            f"{gfake.url}/v1beta/models/{GEMINI}:streamGenerateContent",
            params={"alt": "sse"},
            headers={"x-goog-api-key": gfake.api_key},
            json={"contents": [{"parts": [{"text": "hi"}]}]},
        ) as resp,
    ):
        assert resp.headers["content-type"] == "text/event-stream"
        raw = b"".join(resp.iter_raw())
    assert raw.endswith(b"\r\n\r\n")
    blocks = _sse_blocks(raw, b"\r\n\r\n")
    assert len(blocks) == 3 and all(b.startswith(b"data: {") and b"\n" not in b for b in blocks)
    first = blocks[0].decode()
    assert first.startswith(
        'data: {"candidates": [{"content": {"parts": [{"text": "Echo:"}],"role": "model"},"index": 0}]'
    )
    assert '"usageMetadata": {"promptTokenCount": 1,"candidatesTokenCount": 1,"totalTokenCount": 2}' in first
    last = json.loads(blocks[-1][len(b"data: ") :])
    assert last["candidates"] == [{"content": {"role": "model"}, "finishReason": "STOP", "index": 0}]


@needs_genai
def test_gemini_stream_json_array_without_alt(gfake: FakeGemini) -> None:
    resp = httpx.post(
        f"{gfake.url}/v1beta/models/{GEMINI}:streamGenerateContent",
        headers={"x-goog-api-key": gfake.api_key},
        json={"contents": [{"parts": [{"text": "hi"}]}]},
    )
    docs = resp.json()
    assert isinstance(docs, list) and [d["candidates"][0].get("finishReason") for d in docs] == [
        None,
        None,
        "STOP",
    ]


@needs_genai
def test_gemini_max_tokens_and_stop_sequences(gclient: genai.Client) -> None:
    cut = gclient.models.generate_content(
        model=GEMINI, contents="one two three", config=genai_types.GenerateContentConfig(max_output_tokens=2)
    )
    assert cut.text == "Echo: one"
    assert cut.candidates[0].finish_reason == genai_types.FinishReason.MAX_TOKENS  # type: ignore[index]
    stopped = gclient.models.generate_content(
        model=GEMINI,
        contents="one two three",
        config=genai_types.GenerateContentConfig(stop_sequences=["two"]),
    )
    assert stopped.text == "Echo: one "
    assert stopped.candidates[0].finish_reason == genai_types.FinishReason.STOP  # type: ignore[index]
    chunks = list(
        gclient.models.generate_content_stream(
            model=GEMINI,
            contents="one two three",
            config=genai_types.GenerateContentConfig(max_output_tokens=1),
        )
    )
    assert [c.text for c in chunks] == ["Echo:", None]
    assert chunks[-1].candidates[0].finish_reason == genai_types.FinishReason.MAX_TOKENS  # type: ignore[index]


@needs_genai
def test_gemini_function_calling(gfake: FakeGemini, gclient: genai.Client) -> None:
    tools = _weather_tools()
    config = genai_types.GenerateContentConfig(tools=tools, automatic_function_calling=_no_afc())
    response = gclient.models.generate_content(
        model=GEMINI, contents="What is the weather in Paris?", config=config
    )
    calls = response.function_calls or []
    assert [(c.name, c.args) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert response.candidates[0].finish_reason == genai_types.FinishReason.STOP  # type: ignore[index]
    assert gfake.last_request.body["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"
    streamed = list(gclient.models.generate_content_stream(model=GEMINI, contents="weather?", config=config))
    assert len(streamed) == 1 and streamed[0].function_calls[0].args == {"city": "Paris"}  # type: ignore[index]
    # toolConfig: NONE disables, ANY forces.
    none = genai_types.GenerateContentConfig(
        tools=tools,
        automatic_function_calling=_no_afc(),
        tool_config=genai_types.ToolConfig(
            function_calling_config=genai_types.FunctionCallingConfig(
                mode=genai_types.FunctionCallingConfigMode.NONE
            )
        ),
    )
    assert (
        gclient.models.generate_content(model=GEMINI, contents="weather?", config=none).text
        == "Echo: weather?"
    )
    anyc = genai_types.GenerateContentConfig(
        tools=tools,
        automatic_function_calling=_no_afc(),
        tool_config=genai_types.ToolConfig(
            function_calling_config=genai_types.FunctionCallingConfig(
                mode=genai_types.FunctionCallingConfigMode.ANY
            )
        ),
    )
    assert gclient.models.generate_content(model=GEMINI, contents="hi", config=anyc).function_calls


@needs_genai
def test_gemini_function_response_and_inline_image(gfake: FakeGemini, gclient: genai.Client) -> None:
    contents = [
        genai_types.Content(role="user", parts=[genai_types.Part(text="weather in Paris?")]),
        genai_types.Content(
            role="model",
            parts=[
                genai_types.Part(
                    function_call=genai_types.FunctionCall(name="get_weather", args={"city": "Paris"})
                )
            ],
        ),
        genai_types.Content(
            role="user",
            parts=[
                genai_types.Part(
                    function_response=genai_types.FunctionResponse(name="get_weather", response={"temp": 15})
                ),
                genai_types.Part.from_bytes(data=base64.b64decode(PNG_1X1), mime_type="image/png"),
            ],
        ),
    ]
    response = gclient.models.generate_content(model=GEMINI, contents=contents)
    assert response.text == 'Tool result: {"temp":15}'
    assert (response.usage_metadata.prompt_token_count or 0) >= 258  # type: ignore[union-attr]
    sent = gfake.last_request.body["contents"][2]["parts"]
    assert sent[0]["functionResponse"]["response"] == {"temp": 15}
    # SDK 3.6.1 sends the blob's mime type in snake_case; proto3 JSON (and the fake) accept both.
    inline = sent[1]["inlineData"]
    assert (inline.get("mimeType") or inline.get("mime_type")) == "image/png"


@needs_genai
def test_gemini_json_mode_and_cache(gfake: FakeGemini, gclient: genai.Client) -> None:
    gfake.behaviour(cache_read_tokens=2)
    response = gclient.models.generate_content(
        model=GEMINI,
        contents="x y z",
        config=genai_types.GenerateContentConfig(response_mime_type="application/json"),
    )
    assert json.loads(response.text or "") == {"text": "Echo: x y z"}
    assert response.usage_metadata.cached_content_token_count == 2  # type: ignore[union-attr]
    gfake.behaviour(omit_usage=True)
    assert gclient.models.generate_content(model=GEMINI, contents="hi").usage_metadata is None


@needs_genai
def test_gemini_request_validation(gfake: FakeGemini) -> None:
    url = f"{gfake.url}/v1beta/models/{GEMINI}:generateContent"
    headers = {"x-goog-api-key": gfake.api_key}
    empty = httpx.post(url, headers=headers, json={})
    assert empty.status_code == 400
    assert empty.json()["error"] == {
        "code": 400,
        "message": "* GenerateContentRequest.contents: contents is not specified\n",
        "status": "INVALID_ARGUMENT",
    }
    unknown = httpx.post(url, headers=headers, json={"contents": [{"parts": [{"text": "x"}]}], "bogus": 1})
    assert (
        unknown.json()["error"]["message"]
        == 'Invalid JSON payload received. Unknown name "bogus": Cannot find field.'
    )
    bad_b64 = httpx.post(
        url,
        headers=headers,
        json={"contents": [{"parts": [{"inlineData": {"mimeType": "image/png", "data": "**"}}]}]},
    )
    assert bad_b64.status_code == 400 and "Base64 decoding failed" in bad_b64.json()["error"]["message"]
    snake = httpx.post(
        url,
        headers=headers,
        json={"contents": [{"parts": [{"text": "a b c"}]}], "generation_config": {"max_output_tokens": 1}},
    )
    assert snake.json()["candidates"][0]["finishReason"] == "MAX_TOKENS"


@needs_genai
def test_gemini_embeddings(gfake: FakeGemini, gclient: genai.Client) -> None:
    result = gclient.models.embed_content(model="text-embedding-004", contents=["alpha", "beta"])
    assert [len(e.values or []) for e in result.embeddings or []] == [768, 768]
    assert result.embeddings[0].values == embedding_for("alpha", 768)  # type: ignore[index]
    assert gfake.last_request.path == "/v1beta/models/text-embedding-004:batchEmbedContents"
    small = gclient.models.embed_content(
        model="gemini-embedding-001",
        contents="alpha",
        config=genai_types.EmbedContentConfig(output_dimensionality=8),
    )
    assert len(small.embeddings[0].values or []) == 8  # type: ignore[index]
    single = httpx.post(
        f"{gfake.url}/v1beta/models/text-embedding-004:embedContent",
        headers={"x-goog-api-key": gfake.api_key},
        json={"content": {"parts": [{"text": "alpha"}]}, "outputDimensionality": 4},
    )
    assert single.json() == {"embedding": {"values": embedding_for("alpha", 4)}}
    with pytest.raises(genai_errors.ClientError) as raised:
        gclient.models.embed_content(model=GEMINI, contents="x")
    assert raised.value.code == 404 and "not supported for embedContent" in (raised.value.message or "")


@needs_genai
def test_gemini_list_models(gfake: FakeGemini, gclient: genai.Client) -> None:
    names = [m.name for m in gclient.models.list(config={"page_size": 3})]
    assert f"models/{GEMINI}" in names and "models/text-embedding-004" in names
    assert len(names) == len(gfake.models)
    listed = [r for r in gfake.requests if r.path == "/v1beta/models"]
    assert len(listed) > 1 and listed[1].query["pageToken"] == "3"  # the SDK followed nextPageToken


@needs_genai
@pytest.mark.parametrize(
    ("status", "grpc", "exc_name"),
    [
        (400, "INVALID_ARGUMENT", "ClientError"),
        (403, "PERMISSION_DENIED", "ClientError"),
        (404, "NOT_FOUND", "ClientError"),
        (429, "RESOURCE_EXHAUSTED", "ClientError"),
        (500, "INTERNAL", "ServerError"),
        (503, "UNAVAILABLE", "ServerError"),
    ],
)
def test_gemini_errors(
    gfake: FakeGemini, gclient: genai.Client, status: int, grpc: str, exc_name: str
) -> None:
    exc: type[genai_errors.APIError] = getattr(genai_errors, exc_name)
    gfake.fail_next(status)
    with pytest.raises(exc) as raised:
        gclient.models.generate_content(model=GEMINI, contents="hi")
    assert raised.value.code == status and raised.value.status == grpc
    assert gclient.models.generate_content(model=GEMINI, contents="hi").text == "Echo: hi"


@needs_genai
def test_gemini_rate_limit_retry_info(gfake: FakeGemini, gclient: genai.Client) -> None:
    gfake.fail_next(429, retry_after=37)
    with pytest.raises(genai_errors.ClientError) as raised:
        gclient.models.generate_content(model=GEMINI, contents="hi")
    details = raised.value.details["error"]["details"]
    assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"} in details
    assert "retry-after" not in raised.value.response.headers  # type: ignore[union-attr]


@needs_genai
def test_gemini_auth_errors(gfake: FakeGemini) -> None:
    wrong = _genai(gfake, api_key="AIza-wrong")  # keep a reference: the SDK closes a collected client
    with pytest.raises(genai_errors.ClientError) as raised:
        wrong.models.generate_content(model=GEMINI, contents="hi")
    assert raised.value.code == 400 and raised.value.status == "INVALID_ARGUMENT"
    assert raised.value.message == "API key not valid. Please pass a valid API key."
    reasons = [d.get("reason") for d in raised.value.details["error"]["details"]]
    assert "API_KEY_INVALID" in reasons
    missing = httpx.post(f"{gfake.url}/v1beta/models/{GEMINI}:generateContent", json={"contents": []})
    assert missing.status_code == 403 and missing.json()["error"]["status"] == "PERMISSION_DENIED"
    client = _genai(gfake)
    with pytest.raises(genai_errors.ClientError) as unknown:
        client.models.generate_content(model="gemini-nope", contents="hi")
    assert unknown.value.code == 404 and unknown.value.status == "NOT_FOUND"


@needs_genai
def test_gemini_drop_mid_stream(gfake: FakeGemini, gclient: genai.Client) -> None:
    gfake.behaviour(drop_mid_stream=1)
    received: list[str | None] = []
    with pytest.raises(Exception):  # noqa: B017 - the transport error type is the HTTP client's
        for chunk in gclient.models.generate_content_stream(model=GEMINI, contents="a b c"):
            received.append(chunk.text)
    assert received == ["Echo:"]


@needs_genai
def test_vertex_generate_and_stream(gfake: FakeGemini) -> None:
    vertex = _vertex(gfake)
    response = vertex.models.generate_content(model=GEMINI, contents="hi there")
    assert response.text == "Echo: hi there"
    assert response.usage_metadata.traffic_type == genai_types.TrafficType.ON_DEMAND  # type: ignore[union-attr]
    assert response.create_time is not None
    recorded = gfake.last_request
    assert (
        recorded.path
        == f"/v1/projects/fake-project/locations/us-central1/publishers/google/models/{GEMINI}:generateContent"
    )
    assert recorded.headers["authorization"] == f"Bearer {gfake.access_token}"
    chunks = list(vertex.models.generate_content_stream(model=GEMINI, contents="hi there"))
    assert [c.text for c in chunks] == ["Echo:", " hi", " there"]
    assert chunks[0].usage_metadata.prompt_token_count is None  # type: ignore[union-attr]
    assert chunks[-1].usage_metadata.candidates_token_count == 3  # type: ignore[union-attr]
    assert chunks[-1].candidates[0].finish_reason == genai_types.FinishReason.STOP  # type: ignore[index]
    beta = _vertex(gfake, version="v1beta1")
    assert beta.models.generate_content(model=GEMINI, contents="x").text == "Echo: x"
    assert gfake.last_request.path.startswith("/v1beta1/projects/fake-project/")


@needs_genai
def test_vertex_raw_bytes(gfake: FakeGemini) -> None:
    resp = httpx.post(
        f"{gfake.url}/v1/projects/p/locations/l/publishers/google/models/{GEMINI}:streamGenerateContent",
        params={"alt": "sse"},
        headers={"Authorization": f"Bearer {gfake.access_token}"},
        json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
    )
    blocks = _sse_blocks(resp.content, b"\r\n\r\n")
    assert blocks[0].startswith(
        b'data: {"candidates": [{"content": {"role": "model","parts": [{"text": "Echo:"}]}}],'
        b'"usageMetadata": {"trafficType": "ON_DEMAND"},"modelVersion": "gemini-2.5-flash","createTime": "'
    )


@needs_genai
def test_vertex_embeddings_through_predict(gfake: FakeGemini) -> None:
    vertex = _vertex(gfake)
    result = vertex.models.embed_content(model="text-embedding-004", contents=["hello there", "x"])
    assert result.embeddings is not None and [len(e.values or []) for e in result.embeddings] == [768, 768]
    assert result.embeddings[0].statistics is not None and result.embeddings[0].statistics.token_count == 2
    assert gfake.requests[-1].path.endswith("/publishers/google/models/text-embedding-004:predict")


@needs_genai
def test_vertex_auth_and_project(gfake: FakeGemini) -> None:
    wrong = _vertex(gfake, token="ya29.wrong")
    with pytest.raises(genai_errors.ClientError) as raised:
        wrong.models.generate_content(model=GEMINI, contents="hi")
    assert raised.value.code == 401 and raised.value.status == "UNAUTHENTICATED"
    missing = httpx.post(
        f"{gfake.url}/v1/projects/p/locations/l/publishers/google/models/{GEMINI}:generateContent",
        json={"contents": [{"parts": [{"text": "x"}]}]},
    )
    assert missing.status_code == 401
    assert missing.json()["error"]["details"][0]["reason"] == "CREDENTIALS_MISSING"
    with FakeGemini(project="only-this") as strict:
        client = _vertex(strict)  # keep a reference: the SDK closes a collected client
        with pytest.raises(genai_errors.ClientError) as denied:
            client.models.generate_content(model=GEMINI, contents="hi")
    assert denied.value.code == 403 and denied.value.status == "PERMISSION_DENIED"


# ==================================================================================================
# Bedrock
# ==================================================================================================


@pytest.fixture(scope="module")
def bedrock_server() -> Iterator[FakeBedrock]:
    with FakeBedrock(region="eu-west-3") as fake:
        yield fake


@pytest.fixture
def bfake(bedrock_server: FakeBedrock) -> Iterator[FakeBedrock]:
    bedrock_server.reset()
    yield bedrock_server
    bedrock_server.reset()


def _boto(fake: FakeBedrock, **overrides: Any) -> Any:
    kwargs: dict[str, Any] = {
        "endpoint_url": fake.url,
        "region_name": fake.region,
        "aws_access_key_id": fake.access_key,
        "aws_secret_access_key": fake.secret_key,
        "config": Config(retries={"total_max_attempts": 1}),
    }
    kwargs.update(overrides)
    return boto3.client("bedrock-runtime", **kwargs)


@pytest.fixture
def bclient(bfake: FakeBedrock) -> Any:
    return _boto(bfake)


def _user_msg(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"text": text}]}]


BEDROCK_TOOLS = {
    "tools": [
        {
            "toolSpec": {
                "name": "get_weather",
                "description": "Current weather for a city",
                "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}}},
            }
        }
    ]
}


def _claude_body(**extra: Any) -> str:
    return json.dumps(
        {
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": 50,
            "messages": [{"role": "user", "content": "hi you"}],
            **extra,
        }
    )


@needs_aws
def test_bedrock_converse(bfake: FakeBedrock, bclient: Any) -> None:
    response = bclient.converse(
        modelId=BEDROCK_CLAUDE,
        system=[{"text": "Be brief."}],
        messages=_user_msg("hello fake world"),
        inferenceConfig={"maxTokens": 100, "temperature": 0.3, "topP": 0.9},
    )
    assert response["output"]["message"] == {
        "role": "assistant",
        "content": [{"text": "Echo: hello fake world"}],
    }
    assert response["stopReason"] == "end_turn"
    usage = response["usage"]
    assert usage["outputTokens"] == 4 and usage["inputTokens"] == 3 + 2 + 3 + 3
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"]
    assert usage["cacheReadInputTokens"] == 0 and usage["cacheWriteInputTokens"] == 0
    assert response["metrics"]["latencyMs"] >= 1
    headers = response["ResponseMetadata"]["HTTPHeaders"]
    assert headers["content-type"] == "application/json" and headers["x-amzn-requestid"]
    recorded = bfake.last_request
    assert recorded.raw_path == "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
    assert recorded.path == f"/model/{BEDROCK_CLAUDE}/converse"
    assert f"/{bfake.region}/bedrock/aws4_request" in recorded.headers["authorization"]
    assert recorded.body["inferenceConfig"] == {"maxTokens": 100, "temperature": 0.3, "topP": 0.9}


@needs_aws
def test_bedrock_converse_body_bytes(bfake: FakeBedrock, bclient: Any) -> None:
    raw: dict[str, bytes] = {}

    def keep(response_dict: dict[str, Any], **_: Any) -> None:
        raw["body"] = response_dict["body"]

    bclient.meta.events.register("before-parse.bedrock-runtime.Converse", keep)
    bclient.converse(modelId=BEDROCK_CLAUDE, messages=_user_msg("hi"))
    assert raw["body"].startswith(b'{"metrics":{"latencyMs":')
    assert (
        b'"output":{"message":{"content":[{"text":"Echo: hi"}],"role":"assistant"}},"stopReason":"end_turn"'
        in raw["body"]
    )
    assert b'"usage":{"cacheReadInputTokenCount":0,"cacheReadInputTokens":0,' in raw["body"]


@needs_aws
def test_bedrock_converse_limits_tools_and_results(bclient: Any) -> None:
    cut = bclient.converse(
        modelId=BEDROCK_CLAUDE, messages=_user_msg("one two three"), inferenceConfig={"maxTokens": 2}
    )
    assert cut["output"]["message"]["content"][0]["text"] == "Echo: one" and cut["stopReason"] == "max_tokens"
    stopped = bclient.converse(
        modelId=BEDROCK_CLAUDE,
        messages=_user_msg("one two three"),
        inferenceConfig={"stopSequences": ["three"]},
    )
    assert stopped["output"]["message"]["content"][0]["text"] == "Echo: one two "
    assert stopped["stopReason"] == "stop_sequence"
    tool = bclient.converse(
        modelId=BEDROCK_CLAUDE, messages=_user_msg("weather in Paris?"), toolConfig=BEDROCK_TOOLS
    )
    use = tool["output"]["message"]["content"][0]["toolUse"]
    assert (
        tool["stopReason"] == "tool_use"
        and use["name"] == "get_weather"
        and use["input"] == {"city": "Paris"}
    )
    assert use["toolUseId"].startswith("tooluse_")
    followed = bclient.converse(
        modelId=BEDROCK_CLAUDE,
        toolConfig=BEDROCK_TOOLS,
        messages=[
            *_user_msg("weather in Paris?"),
            {"role": "assistant", "content": [{"toolUse": use}]},
            {
                "role": "user",
                "content": [
                    {
                        "toolResult": {
                            "toolUseId": use["toolUseId"],
                            "content": [{"json": {"temp": 15}}],
                            "status": "success",
                        }
                    },
                    {"image": {"format": "png", "source": {"bytes": base64.b64decode(PNG_1X1)}}},
                ],
            },
        ],
    )
    assert followed["output"]["message"]["content"][0]["text"] == 'Tool result: {"temp":15}'
    forced = bclient.converse(
        modelId=BEDROCK_CLAUDE,
        messages=_user_msg("hi"),
        toolConfig={**BEDROCK_TOOLS, "toolChoice": {"any": {}}},
    )
    assert forced["stopReason"] == "tool_use"


@needs_aws
def test_bedrock_converse_stream(bfake: FakeBedrock, bclient: Any) -> None:
    response = bclient.converse_stream(modelId=BEDROCK_CLAUDE, messages=_user_msg("alpha beta"))
    assert response["ResponseMetadata"]["HTTPHeaders"]["content-type"] == "application/vnd.amazon.eventstream"
    events = list(response["stream"])
    assert [next(iter(e)) for e in events] == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert events[0]["messageStart"] == {"role": "assistant"}
    assert [e["contentBlockDelta"]["delta"]["text"] for e in events[1:4]] == ["Echo:", " alpha", " beta"]
    assert events[5]["messageStop"] == {"stopReason": "end_turn"}
    metadata = events[6]["metadata"]
    assert metadata["usage"]["outputTokens"] == 3 and "latencyMs" in metadata["metrics"]


@needs_aws
def test_bedrock_converse_stream_tool_use(bclient: Any) -> None:
    events = list(
        bclient.converse_stream(
            modelId=BEDROCK_CLAUDE, messages=_user_msg("weather?"), toolConfig=BEDROCK_TOOLS
        )["stream"]
    )
    start = events[1]["contentBlockStart"]
    assert start["contentBlockIndex"] == 0 and start["start"]["toolUse"]["name"] == "get_weather"
    pieces = [e["contentBlockDelta"]["delta"]["toolUse"]["input"] for e in events if "contentBlockDelta" in e]
    assert json.loads("".join(pieces)) == {"city": "Paris"}
    assert events[-2]["messageStop"]["stopReason"] == "tool_use"


def _decode_eventstream(raw: bytes) -> list[Any]:
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    return list(buffer)  # botocore validates both CRCs and the lengths while decoding


@needs_aws
def test_bedrock_eventstream_bytes(bfake: FakeBedrock) -> None:
    path = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse-stream"
    body = json.dumps({"messages": _user_msg("hi")}).encode()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    resp = httpx.post(f"{bfake.url}{path}", content=body, headers=_signed_headers(bfake, path, body, now))
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/vnd.amazon.eventstream"
    raw = {"body": resp.content}
    messages = _decode_eventstream(raw["body"])
    assert [m.headers[":event-type"] for m in messages] == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    for message in messages:
        assert message.headers[":content-type"] == "application/json"
        assert message.headers[":message-type"] == "event"
        payload = json.loads(message.payload)
        assert list(payload) == sorted(payload)  # the service serialises keys sorted
        assert "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789".startswith(payload["p"])
    assert json.loads(messages[1].payload)["delta"] == {"text": "Echo:"}
    # The encoder itself, byte for byte, against the captured frame layout.
    frame = event_message([(":event-type", "chunk")], b"{}")
    assert frame[:8] == (4 + 4 + 4 + 20 + 2 + 4).to_bytes(4, "big") + (20).to_bytes(4, "big")
    assert frame[12:32] == b"\x0b:event-type\x07\x00\x05chunk"


@needs_aws
def test_bedrock_stream_exception(bfake: FakeBedrock, bclient: Any) -> None:
    bfake.behaviour(error_mid_stream=2)
    received: list[str] = []
    with pytest.raises(botocore.exceptions.EventStreamError) as raised:
        for event in bclient.converse_stream(modelId=BEDROCK_CLAUDE, messages=_user_msg("a b c"))["stream"]:
            received.append(next(iter(event)))
    assert received == ["messageStart", "contentBlockDelta"]
    assert isinstance(raised.value, botocore.exceptions.ClientError)
    assert raised.value.response["Error"]["Code"] == "throttlingException"
    bfake.behaviour(error_mid_stream=1, error_mid_stream_type="modelStreamErrorException")
    with pytest.raises(botocore.exceptions.EventStreamError) as model_error:
        list(bclient.invoke_model_with_response_stream(modelId=BEDROCK_CLAUDE, body=_claude_body())["body"])
    assert model_error.value.response["Error"]["Code"] == "modelStreamErrorException"


@needs_aws
def test_bedrock_invoke_model(bfake: FakeBedrock, bclient: Any) -> None:
    response = bclient.invoke_model(modelId=BEDROCK_CLAUDE, body=_claude_body(stop_sequences=["you"]))
    assert response["contentType"] == "application/json"
    body = json.loads(response["body"].read())
    assert body["id"].startswith("msg_bdrk_") and body["model"] == "claude-3-haiku-20240307"
    assert body["content"] == [{"type": "text", "text": "Echo: hi "}]
    assert body["stop_reason"] == "stop_sequence" and body["stop_sequence"] == "you"
    headers = response["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amzn-bedrock-input-token-count"] == str(body["usage"]["input_tokens"])
    assert headers["x-amzn-bedrock-output-token-count"] == "2"
    assert "x-amzn-bedrock-invocation-latency" in headers
    assert "model" not in bfake.last_request.body
    tool = json.loads(
        bclient.invoke_model(
            modelId=BEDROCK_CLAUDE,
            body=json.dumps(
                {
                    "anthropic_version": "bedrock-2023-05-31",
                    "max_tokens": 50,
                    "tools": [ANTHROPIC_WEATHER_TOOL],
                    "messages": [{"role": "user", "content": "weather?"}],
                }
            ),
        )["body"].read()
    )
    assert tool["stop_reason"] == "tool_use" and tool["content"][0]["input"] == {"city": "Paris"}


@needs_aws
def test_bedrock_invoke_validation(bclient: Any) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as missing:
        bclient.invoke_model(modelId=BEDROCK_CLAUDE, body=json.dumps({"max_tokens": 5, "messages": []}))
    assert missing.value.response["Error"]["Code"] == "ValidationException"
    assert "required key [anthropic_version] not found" in missing.value.response["Error"]["Message"]
    with pytest.raises(botocore.exceptions.ClientError) as extra:
        bclient.invoke_model(modelId=BEDROCK_CLAUDE, body=_claude_body(model="claude-3-haiku-20240307"))
    assert extra.value.response["Error"]["Message"] == (
        "Malformed input request: #: extraneous key [model] is not permitted, please reformat your input and try again."
    )
    assert extra.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


@needs_aws
def test_bedrock_invoke_with_response_stream(bclient: Any) -> None:
    response = bclient.invoke_model_with_response_stream(modelId=BEDROCK_CLAUDE, body=_claude_body())
    events = [json.loads(e["chunk"]["bytes"]) for e in response["body"]]
    assert [e["type"] for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]  # no ping on Bedrock
    assert "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta") == "Echo: hi you"
    metrics = events[-1]["amazon-bedrock-invocationMetrics"]
    assert metrics["inputTokenCount"] == events[0]["message"]["usage"]["input_tokens"]
    assert metrics["outputTokenCount"] == 3


@needs_aws
def test_bedrock_anthropic_sdk(bfake: FakeBedrock) -> None:
    # The official Anthropic SDK's Bedrock client signs with botocore too and reads the stream.
    client = anthropic.AnthropicBedrock(
        aws_access_key=bfake.access_key,
        aws_secret_key=bfake.secret_key,
        aws_region=bfake.region,
        base_url=bfake.url,
        max_retries=0,
    )
    message = client.messages.create(
        model=BEDROCK_CLAUDE, max_tokens=20, messages=[{"role": "user", "content": "hi there"}]
    )
    assert message.content[0].text == "Echo: hi there"  # type: ignore[union-attr]
    with client.messages.stream(
        model=BEDROCK_CLAUDE,
        max_tokens=100,
        tools=[ANTHROPIC_WEATHER_TOOL],
        messages=[{"role": "user", "content": "weather?"}],
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[0].input == {"city": "Paris"}  # type: ignore[union-attr]


@needs_aws
@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "ValidationException"),
        (403, "AccessDeniedException"),
        (404, "ResourceNotFoundException"),
        (408, "ModelTimeoutException"),
        (429, "ThrottlingException"),
        (500, "InternalServerException"),
        (503, "ServiceUnavailableException"),
    ],
)
def test_bedrock_errors(bfake: FakeBedrock, bclient: Any, status: int, code: str) -> None:
    bfake.fail_next(status)
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        bclient.converse(modelId=BEDROCK_CLAUDE, messages=_user_msg("hi"))
    error = raised.value.response
    assert error["Error"]["Code"] == code
    assert error["ResponseMetadata"]["HTTPStatusCode"] == status
    assert error["ResponseMetadata"]["HTTPHeaders"]["x-amzn-errortype"] == (
        f"{code}:http://internal.amazon.com/coral/com.amazon.bedrock/"
    )
    assert error["Error"]["Message"]
    bfake.fail_next(status, match="converse-stream")
    with pytest.raises(botocore.exceptions.ClientError) as streamed:
        bclient.converse_stream(modelId=BEDROCK_CLAUDE, messages=_user_msg("hi"))
    assert streamed.value.response["Error"]["Code"] == code


@needs_aws
def test_bedrock_error_type_override_and_unknown_model(bfake: FakeBedrock, bclient: Any) -> None:
    bfake.fail_next(400, error_type="ServiceQuotaExceededException")
    with pytest.raises(botocore.exceptions.ClientError) as quota:
        bclient.converse(modelId=BEDROCK_CLAUDE, messages=_user_msg("hi"))
    assert quota.value.response["Error"]["Code"] == "ServiceQuotaExceededException"
    with pytest.raises(botocore.exceptions.ClientError) as unknown:
        bclient.converse(modelId="anthropic.claude-nope-v1:0", messages=_user_msg("hi"))
    assert unknown.value.response["Error"] == {
        "Message": "The provided model identifier is invalid.",
        "Code": "ValidationException",
    }


@needs_aws
def test_bedrock_profiles_arns_and_cache(bfake: FakeBedrock, bclient: Any) -> None:
    bfake.behaviour(cache_read_tokens=3, cache_write_tokens=1)
    profile = bclient.converse(
        modelId="us.anthropic.claude-3-5-haiku-20241022-v1:0", messages=_user_msg("a b c d")
    )
    assert profile["usage"]["cacheReadInputTokens"] == 3 and profile["usage"]["cacheWriteInputTokens"] == 1
    assert profile["usage"]["totalTokens"] == sum(
        profile["usage"][k]
        for k in ("inputTokens", "outputTokens", "cacheReadInputTokens", "cacheWriteInputTokens")
    )
    arn = f"arn:aws:bedrock:{bfake.region}:123456789012:inference-profile/eu.anthropic.claude-3-haiku-20240307-v1:0"
    assert bclient.converse(modelId=arn, messages=_user_msg("x"))["stopReason"] == "end_turn"
    assert "%2F" in bfake.last_request.raw_path  # boto3 percent-encodes the ARN into one path segment
    llama = bclient.converse(modelId="meta.llama3-8b-instruct-v1:0", messages=_user_msg("x"))
    assert "cacheReadInputTokens" not in llama["usage"]


@needs_aws
def test_bedrock_sigv4_rejections(bfake: FakeBedrock) -> None:
    def code_of(client: Any) -> tuple[str, int]:
        with pytest.raises(botocore.exceptions.ClientError) as raised:
            client.converse(modelId=BEDROCK_CLAUDE, messages=_user_msg("hi"))
        return raised.value.response["Error"]["Code"], raised.value.response["ResponseMetadata"][
            "HTTPStatusCode"
        ]

    assert code_of(_boto(bfake, aws_secret_access_key="wrong-secret")) == ("InvalidSignatureException", 403)
    assert code_of(_boto(bfake, aws_access_key_id="AKIAUNKNOWNKEY000000")) == (
        "UnrecognizedClientException",
        403,
    )
    assert code_of(_boto(bfake, region_name="us-west-2")) == ("InvalidSignatureException", 403)
    unsigned = httpx.post(f"{bfake.url}/model/{BEDROCK_CLAUDE}/converse", json={"messages": []})
    assert unsigned.status_code == 403
    assert unsigned.headers["x-amzn-errortype"].startswith("MissingAuthenticationTokenException:")
    assert unsigned.json() == {"message": "Missing Authentication Token"}
    assert bfake.requests[-1].headers.get("authorization") is None


def _signed_headers(fake: FakeBedrock, path: str, body: bytes, timestamp: str) -> dict[str, str]:
    """Sign like botocore does, but at a chosen time."""
    request = AWSRequest(
        method="POST", url=f"{fake.url}{path}", data=body, headers={"Content-Type": "application/json"}
    )
    request.context["timestamp"] = timestamp
    signer = SigV4Auth(Credentials(fake.access_key, fake.secret_key), "bedrock", fake.region)
    request.headers["X-Amz-Date"] = timestamp
    canonical = signer.canonical_request(request)
    signature = signer.signature(signer.string_to_sign(request, canonical), request)
    signed = signer.signed_headers(signer.headers_to_sign(request))
    request.headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={signer.scope(request)}, SignedHeaders={signed}, Signature={signature}"
    )
    return dict(request.headers.items())


@needs_aws
def test_bedrock_sigv4_body_tampering_and_expiry(bfake: FakeBedrock) -> None:
    path = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
    body = json.dumps({"messages": _user_msg("hi")}).encode()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    headers = _signed_headers(bfake, path, body, now)
    ok = httpx.post(f"{bfake.url}{path}", content=body, headers=headers)
    assert ok.status_code == 200, ok.text
    tampered = httpx.post(f"{bfake.url}{path}", content=body.replace(b"hi", b"ho"), headers=headers)
    assert tampered.status_code == 403 and tampered.headers["x-amzn-errortype"].startswith(
        "InvalidSignatureException"
    )
    old = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=20)).strftime("%Y%m%dT%H%M%SZ")
    expired = httpx.post(f"{bfake.url}{path}", content=body, headers=_signed_headers(bfake, path, body, old))
    assert expired.status_code == 403 and expired.json()["message"].startswith(f"Signature expired: {old}")


@needs_aws
def test_bedrock_session_token_and_bearer() -> None:
    with FakeBedrock(session_token="fake-session-token", bearer_token="ABSKfakebedrockapikey") as fake:
        good = _boto(fake, aws_session_token="fake-session-token")
        assert good.converse(modelId=BEDROCK_CLAUDE, messages=_user_msg("hi"))["stopReason"] == "end_turn"
        assert fake.last_request.headers["x-amz-security-token"] == "fake-session-token"
        with pytest.raises(botocore.exceptions.ClientError) as raised:
            _boto(fake).converse(modelId=BEDROCK_CLAUDE, messages=_user_msg("hi"))
        assert raised.value.response["Error"]["Code"] == "UnrecognizedClientException"
        bearer = httpx.post(
            f"{fake.url}/model/{BEDROCK_CLAUDE}/converse",
            headers={"Authorization": "Bearer ABSKfakebedrockapikey"},
            json={"messages": _user_msg("hi")},
        )
        assert bearer.status_code == 200 and bearer.json()["stopReason"] == "end_turn"


@needs_aws
def test_bedrock_omit_usage_and_drop(bfake: FakeBedrock, bclient: Any) -> None:
    bfake.behaviour(omit_usage=True)
    events = list(bclient.converse_stream(modelId=BEDROCK_CLAUDE, messages=_user_msg("hi"))["stream"])
    assert "metadata" not in [next(iter(e)) for e in events]
    invoked = bclient.invoke_model(modelId=BEDROCK_CLAUDE, body=_claude_body())
    assert "x-amzn-bedrock-input-token-count" not in invoked["ResponseMetadata"]["HTTPHeaders"]
    bfake.behaviour(omit_usage=False, drop_mid_stream=2)
    with pytest.raises(Exception):  # noqa: B017 - urllib3/botocore report the cut as they see fit
        list(bclient.converse_stream(modelId=BEDROCK_CLAUDE, messages=_user_msg("a b c d"))["stream"])


@needs_aws
def test_bedrock_titan_and_cohere_embeddings_through_boto3(bclient: Any) -> None:
    titan = bclient.invoke_model(
        modelId="amazon.titan-embed-text-v2:0",
        body=json.dumps({"inputText": "hello there", "dimensions": 512}),
    )
    doc = json.loads(titan["body"].read())
    assert set(doc) == {"embedding", "embeddingsByType", "inputTextTokenCount"}
    assert len(doc["embedding"]) == 512 and doc["embeddingsByType"]["float"] == doc["embedding"]
    assert doc["inputTextTokenCount"] == 2
    assert titan["ResponseMetadata"]["HTTPHeaders"]["x-amzn-bedrock-input-token-count"] == "2"
    cohere = bclient.invoke_model(
        modelId="cohere.embed-english-v3",
        body=json.dumps({"texts": ["a b", "c"], "input_type": "search_query"}),
    )
    doc = json.loads(cohere["body"].read())
    assert doc["response_type"] == "embeddings_floats" and len(doc["embeddings"]) == 2
    assert len(doc["embeddings"][0]) == 1024 and doc["texts"] == ["a b", "c"]
    by_type = bclient.invoke_model(
        modelId="cohere.embed-english-v3",
        body=json.dumps({"texts": ["a"], "input_type": "search_query", "embedding_types": ["float"]}),
    )
    assert json.loads(by_type["body"].read())["response_type"] == "embeddings_by_type"
    for model_id, body in [
        ("amazon.titan-embed-text-v2:0", {"inputText": "x", "dimensions": 100}),
        ("amazon.titan-embed-text-v1", {"inputText": "x", "dimensions": 256}),
        ("cohere.embed-english-v3", {"texts": ["x"]}),
        ("cohere.embed-english-v3", {"texts": ["x"] * 97, "input_type": "search_query"}),
    ]:
        with pytest.raises(botocore.exceptions.ClientError) as raised:
            bclient.invoke_model(modelId=model_id, body=json.dumps(body))
        assert raised.value.response["Error"]["Code"] == "ValidationException"
        assert raised.value.response["Error"]["Message"].startswith("Malformed input request: #")
