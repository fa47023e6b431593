"""Each translating adapter through the openai SDK: chat, streaming with a tool call, usage, errors."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest

from gateway.models import CatalogModel, Deployment, Provider
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.bedrock_upstream import FakeBedrock
from tests.fakes.gemini_upstream import FakeGemini

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]  # fmt: skip
HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello vendor"}]


@pytest.fixture(scope="module")
def vendors() -> Iterator[dict[str, Any]]:
    with FakeAnthropic() as claude, FakeGemini() as gemini, FakeBedrock() as bedrock:
        yield {"anthropic": claude, "gemini": gemini, "bedrock": bedrock}


@pytest.fixture
def vendor_catalog(catalog: Any, vendors: dict[str, Any]) -> dict[str, Any]:
    for fake in vendors.values():
        fake.reset()
    claude = Provider(name="claude", kind="anthropic", base_url=vendors["anthropic"].url)
    claude.set_api_key(vendors["anthropic"].api_key)
    claude.save()
    gemini = Provider(name="gemini", kind="gemini", base_url=vendors["gemini"].url)
    gemini.set_api_key(vendors["gemini"].api_key)
    gemini.save()
    bedrock = Provider(name="bedrock", kind="bedrock", base_url=vendors["bedrock"].url, region="us-east-1",
                       options={"access_key_id": vendors["bedrock"].access_key})  # fmt: skip
    bedrock.set_api_key(vendors["bedrock"].secret_key)
    bedrock.save()
    bedrock_claude = Provider(name="bedrock-claude", kind="anthropic", base_url=vendors["bedrock"].url, region="us-east-1",
                              options={"access_key_id": vendors["bedrock"].access_key, "bedrock": True})  # fmt: skip
    bedrock_claude.set_api_key(vendors["bedrock"].secret_key)
    bedrock_claude.save()
    price = {"input_per_mtok": Decimal("1"), "output_per_mtok": Decimal("2")}
    for name, provider, target in [
        ("claude-sonnet", claude, "claude-sonnet-4-5-20250929"),
        ("gemini-flash", gemini, "gemini-2.5-flash"),
        ("bedrock-claude-converse", bedrock, "anthropic.claude-3-5-haiku-20241022-v1:0"),
        ("bedrock-claude-invoke", bedrock_claude, "anthropic.claude-3-5-haiku-20241022-v1:0"),
    ]:
        model = CatalogModel.objects.create(name=name, **price)
        Deployment.objects.create(model=model, provider=provider, provider_model=target)
    emb = CatalogModel.objects.create(name="gemini-embedding", kind="embedding")
    Deployment.objects.create(model=emb, provider=gemini, provider_model="text-embedding-004")
    for name, target in [
        ("titan-embed", "amazon.titan-embed-text-v2:0"),
        ("cohere-embed", "cohere.embed-english-v3"),
    ]:
        emb = CatalogModel.objects.create(name=name, kind="embedding", input_per_mtok=Decimal("1"))
        Deployment.objects.create(model=emb, provider=bedrock, provider_model=target)
    return vendors


def error_of(raised: pytest.ExceptionInfo[openai.APIStatusError]) -> dict[str, Any]:
    """The OpenAI-shaped error body the SDK parsed (its `body` is typed `object`)."""
    body = raised.value.body
    assert isinstance(body, dict), body
    return body


MODELS = ["claude-sonnet", "gemini-flash", "bedrock-claude-converse", "bedrock-claude-invoke"]


@pytest.mark.parametrize("model", MODELS)
def test_chat_comes_back_in_openai_shape(
    sdk: openai.OpenAI, vendor_catalog: Any, model: str, ledger: Any
) -> None:
    completion = sdk.chat.completions.create(model=model, messages=HELLO, max_tokens=50, temperature=0.2)  # type: ignore[arg-type]
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "Echo: Hello vendor"
    assert completion.choices[0].finish_reason == "stop"
    assert (
        completion.usage is not None
        and completion.usage.prompt_tokens > 0
        and completion.usage.completion_tokens > 0
    )
    [event] = ledger(1)
    assert event.prompt_tokens == completion.usage.prompt_tokens
    assert event.completion_tokens == completion.usage.completion_tokens
    assert event.cost_usd > 0 and not event.tokens_estimated


@pytest.mark.parametrize("model", MODELS)
def test_a_streamed_tool_call_works_through_each_adapter(
    sdk: openai.OpenAI, vendor_catalog: Any, model: str, ledger: Any
) -> None:
    stream = sdk.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=TOOLS,
        stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )
    name, arguments, finish, usage = "", "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                if call.function and call.function.name:
                    name = call.function.name
                arguments += (call.function.arguments or "") if call.function else ""
            finish = choice.finish_reason or finish
    assert name == "get_weather"
    assert arguments.replace(" ", "") == '{"city":"Paris"}'
    assert finish == "tool_calls"
    assert usage is not None and usage.completion_tokens > 0
    [event] = ledger(1)
    assert event.streamed and event.completion_tokens == usage.completion_tokens


@pytest.mark.parametrize("model", MODELS)
def test_a_tool_result_round_trip(sdk: openai.OpenAI, vendor_catalog: Any, model: str) -> None:
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
                                                               "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]  # fmt: skip
    completion = sdk.chat.completions.create(model=model, messages=messages, tools=TOOLS)  # type: ignore[arg-type]
    assert "sunny" in (completion.choices[0].message.content or "")


@pytest.mark.parametrize("model", MODELS)
def test_streamed_text_arrives_as_openai_chunks(sdk: openai.OpenAI, vendor_catalog: Any, model: str) -> None:
    chunks: list[Any] = list(sdk.chat.completions.create(model=model, messages=HELLO, stream=True))  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: Hello vendor"
    assert all(c.choices for c in chunks)  # no usage chunk unless asked


def test_max_tokens_and_stop_sequences_are_mapped(sdk: openai.OpenAI, vendor_catalog: Any) -> None:
    for model in MODELS:
        cut = sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "one two three four five six"}],  # type: ignore[arg-type]
                                          max_tokens=2)  # fmt: skip
        assert cut.choices[0].finish_reason == "length", model


def test_gemini_embeddings(sdk: openai.OpenAI, vendor_catalog: Any) -> None:
    result = sdk.embeddings.create(model="gemini-embedding", input=["a", "b"])  # the SDK asks base64
    assert len(result.data) == 2 and len(result.data[0].embedding) > 0


def test_bedrock_titan_embeddings(sdk: openai.OpenAI, vendor_catalog: Any, ledger: Any) -> None:
    bedrock = vendor_catalog["bedrock"]
    result = sdk.embeddings.create(model="titan-embed", input="the quarterly report", dimensions=256)
    assert len(result.data) == 1 and len(result.data[0].embedding) == 256
    assert abs(sum(v * v for v in result.data[0].embedding) - 1) < 1e-3  # the fake's unit vector, intact
    sent = bedrock.requests[-1]
    assert sent.path == "/model/amazon.titan-embed-text-v2:0/invoke"
    assert sent.body == {"inputText": "the quarterly report", "dimensions": 256, "normalize": True}
    assert sent.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=")  # SigV4-signed
    assert result.usage.prompt_tokens == 3  # Titan's own inputTextTokenCount, not an estimate
    (event,) = ledger(1, model="titan-embed")
    assert event.prompt_tokens == 3 and not event.tokens_estimated and event.cost_usd > 0


def test_bedrock_cohere_embeddings_take_a_batch(sdk: openai.OpenAI, vendor_catalog: Any) -> None:
    bedrock = vendor_catalog["bedrock"]
    result = sdk.embeddings.create(model="cohere-embed", input=["first text", "second text", "third"])
    assert [d.index for d in result.data] == [0, 1, 2] and len(result.data[2].embedding) == 1024
    assert result.data[0].embedding != result.data[1].embedding
    sent = bedrock.requests[-1]
    assert sent.path == "/model/cohere.embed-english-v3/invoke"
    assert sent.body == {"texts": ["first text", "second text", "third"], "input_type": "search_document",
                         "truncate": "END"}  # fmt: skip


def test_bedrock_embedding_inputs_it_cannot_take_are_a_400_before_any_call(
    sdk: openai.OpenAI, vendor_catalog: Any
) -> None:
    bedrock = vendor_catalog["bedrock"]
    with pytest.raises(openai.BadRequestError) as titan_batch:
        sdk.embeddings.create(model="titan-embed", input=["one", "two"])
    assert error_of(titan_batch)["param"] == "input" and "one input" in error_of(titan_batch)["message"]
    with pytest.raises(openai.BadRequestError) as dims:
        sdk.embeddings.create(model="titan-embed", input="x", dimensions=100)
    assert error_of(dims)["param"] == "dimensions"
    with pytest.raises(openai.BadRequestError) as too_many:
        sdk.embeddings.create(model="cohere-embed", input=[f"t{i}" for i in range(97)])
    assert "96" in error_of(too_many)["message"]
    with pytest.raises(openai.BadRequestError) as tokens:
        sdk.embeddings.create(model="cohere-embed", input=[[1, 2, 3]])
    assert error_of(tokens)["param"] == "input"
    assert bedrock.requests == []


def test_gemini_on_vertex_ai_uses_the_project_path_and_a_bearer_token(
    sdk: openai.OpenAI, vendor_catalog: Any
) -> None:
    with FakeGemini(project="acme-prod", location="europe-west4") as vertex_fake:
        vertex = Provider(name="vertex", kind="gemini", base_url=vertex_fake.url, region="europe-west4",
                          options={"vertex": True, "project": "acme-prod", "location": "europe-west4"})  # fmt: skip
        vertex.set_api_key(vertex_fake.access_token)
        vertex.save()
        model = CatalogModel.objects.create(name="gemini-vertex", input_per_mtok=Decimal("1"))
        Deployment.objects.create(model=model, provider=vertex, provider_model="gemini-2.5-flash")
        emb = CatalogModel.objects.create(name="vertex-embedding", kind="embedding")
        Deployment.objects.create(model=emb, provider=vertex, provider_model="text-embedding-004")
        answer = sdk.chat.completions.create(
            model="gemini-vertex", messages=[{"role": "user", "content": "hi there"}]
        )
        chunks = list(
            sdk.chat.completions.create(
                model="gemini-vertex", messages=[{"role": "user", "content": "hi again"}], stream=True
            )  # fmt: skip
        )
        embeddings = sdk.embeddings.create(
            model="vertex-embedding", input=["one two", "three"], dimensions=64
        )
        sent = vertex_fake.requests
    assert answer.choices[0].message.content == "Echo: hi there"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: hi again"
    base = "/v1/projects/acme-prod/locations/europe-west4/publishers/google/models/gemini-2.5-flash"
    assert [r.path for r in sent[:2]] == [f"{base}:generateContent", f"{base}:streamGenerateContent"]
    assert sent[1].query == {"alt": "sse"}
    assert sent[0].headers["authorization"] == f"Bearer {vertex_fake.access_token}"
    assert "x-goog-api-key" not in sent[0].headers
    assert [len(d.embedding) for d in embeddings.data] == [64, 64]
    assert embeddings.usage.prompt_tokens == 3  # Vertex's own token counts, summed
    assert (
        sent[2].path
        == "/v1/projects/acme-prod/locations/europe-west4/publishers/google/models/text-embedding-004:predict"
    )
    assert sent[2].body == {"instances": [{"content": "one two"}, {"content": "three"}],
                            "parameters": {"outputDimensionality": 64}}  # fmt: skip


@pytest.mark.parametrize("model", MODELS)
def test_vendor_rate_limits_become_openai_rate_limit_errors(
    sdk: openai.OpenAI, vendor_catalog: Any, model: str
) -> None:
    fake = vendor_catalog[
        "anthropic" if model == "claude-sonnet" else "gemini" if model.startswith("gemini") else "bedrock"
    ]
    fake.fail_next(429)
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model=model, messages=HELLO)  # type: ignore[arg-type]


def test_a_wrong_credential_is_an_operator_problem_not_the_callers(
    sdk: openai.OpenAI, vendor_catalog: Any
) -> None:
    import time

    Provider.objects.filter(name="claude").first().set_api_key("wrong")  # type: ignore[union-attr]
    claude = Provider.objects.get(name="claude")
    claude.set_api_key("wrong")
    claude.save()
    time.sleep(0.3)
    with pytest.raises(openai.APIStatusError) as exc:
        sdk.chat.completions.create(model="claude-sonnet", messages=HELLO)  # type: ignore[arg-type]
    assert exc.value.status_code == 502 and exc.value.code == "upstream_auth_error"
