"""The Azure OpenAI-compatible route: `openai.AzureOpenAI` works unchanged against the gateway."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI

HELLO = [{"role": "user", "content": "Hello Azure"}]


@pytest.fixture
def azure(gateway: Any, alice_key: Any) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=gateway.url, api_key=alice_key[1], api_version="2024-10-21", max_retries=0
    )


def test_azure_chat_through_an_azure_deployment(
    azure: openai.AzureOpenAI, fake: FakeOpenAI, ledger: Any
) -> None:
    completion = azure.chat.completions.create(model="gpt-4o", messages=HELLO)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == "Echo: Hello Azure"
    upstream = fake.requests[-1]
    assert upstream.flavour == "azure"
    assert upstream.deployment == "gpt-4o"
    assert upstream.api_version == "2024-10-21"
    assert upstream.headers["api-key"] == fake.api_key
    assert "authorization" not in upstream.headers
    # Azure's content-filter annotations come through untouched.
    raw = completion.model_dump()
    assert "prompt_filter_results" in raw
    [event] = ledger(1)
    assert event.model == "gpt-4o" and event.provider == "azure-eu"


def test_azure_client_to_an_openai_style_deployment(azure: openai.AzureOpenAI, fake: FakeOpenAI) -> None:
    # The public model gpt-4o-mini is deployed on the OpenAI-style provider: clients need not care.
    completion = azure.chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == "Echo: Hello Azure"
    assert fake.requests[-1].flavour == "openai"


def test_azure_streaming_and_embeddings(azure: openai.AzureOpenAI) -> None:
    stream = azure.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)  # type: ignore[arg-type]
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Echo: Hello Azure"
    embedding = azure.embeddings.create(model="text-embedding-3-small", input="hi")
    assert len(embedding.data[0].embedding) == 8


def test_the_api_key_header_is_accepted_and_api_version_is_required(gateway: Any, alice_key: Any) -> None:
    url = f"{gateway.url}/openai/deployments/gpt-4o/chat/completions"
    body = {"messages": HELLO}
    ok = httpx.post(f"{url}?api-version=2024-10-21", headers={"api-key": alice_key[1]}, json=body)
    assert ok.status_code == 200
    missing = httpx.post(url, headers={"api-key": alice_key[1]}, json=body)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "missing_api_version"


def test_azure_errors_surface_as_sdk_exceptions(gateway: Any) -> None:
    bad = openai.AzureOpenAI(
        azure_endpoint=gateway.url, api_key="nope", api_version="2024-10-21", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="gpt-4o", messages=HELLO)  # type: ignore[arg-type]
