"""`/gemini/v1beta/models/{model}:generateContent`: Google's google-genai SDK works against the gateway."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from google import genai
from google.genai import types

from tests.fakes.openai_upstream import FakeOpenAI


@pytest.fixture
def gemini_client(gateway: Any, alice_key: Any) -> genai.Client:
    return genai.Client(
        api_key=alice_key[1], http_options=types.HttpOptions(base_url=f"{gateway.url}/gemini")
    )


def test_generate_content_through_any_provider(
    gemini_client: genai.Client, fake: FakeOpenAI, ledger: Any
) -> None:
    response = gemini_client.models.generate_content(
        model="gpt-4o-mini", contents="Hello Gemini",
        config=types.GenerateContentConfig(system_instruction="Be brief.", max_output_tokens=50),
    )  # fmt: skip
    assert response.text == "Echo: Hello Gemini"
    assert response.usage_metadata is not None and response.usage_metadata.candidates_token_count
    assert fake.requests[-1].body["messages"][0] == {"role": "system", "content": "Be brief."}
    [event] = ledger(1)
    assert event.status == 200 and event.completion_tokens == response.usage_metadata.candidates_token_count


def test_streaming_and_function_calls(gemini_client: genai.Client, ledger: Any) -> None:
    text = "".join(
        chunk.text or ""
        for chunk in gemini_client.models.generate_content_stream(model="gpt-4o-mini", contents="Stream it")
    )
    assert text == "Echo: Stream it"
    weather = types.FunctionDeclaration(name="get_weather", description="Weather",
                                        parameters=types.Schema(type="OBJECT", properties={"city": types.Schema(type="STRING")}))  # fmt: skip
    config = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[weather])],
                                         automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))  # fmt: skip
    calls = []
    for chunk in gemini_client.models.generate_content_stream(
        model="gpt-4o-mini", contents="weather in Paris?", config=config
    ):
        calls += chunk.function_calls or []
    assert [(c.name, c.args) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert len(ledger(2)) == 2


def test_errors_are_gemini_shaped(gateway: Any) -> None:
    response = httpx.post(f"{gateway.url}/gemini/v1beta/models/gpt-4o-mini:generateContent", headers={"x-goog-api-key": "nope"},
                          json={"contents": [{"parts": [{"text": "x"}]}]})  # fmt: skip
    assert response.status_code == 401
    assert response.json()["error"]["status"] == "UNAUTHENTICATED"
    # Our keys are never taken from the query string, even where Google's API would accept ?key=.
    assert (
        httpx.post(
            f"{gateway.url}/gemini/v1beta/models/gpt-4o-mini:generateContent?key=x", json={}
        ).status_code
        == 401
    )


BAD_BODIES = [
    ({"contents": 5}, "contents"),
    ({"contents": [5]}, "contents[0]"),
    ({"contents": [{"parts": 5}]}, "contents[0].parts"),
    ({"contents": [{"parts": [{"text": "x"}]}], "systemInstruction": {"parts": 5}}, "systemInstruction.parts"),
    ({"contents": [{"parts": [{"text": "x"}]}], "systemInstruction": "be brief"}, "systemInstruction"),
    ({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": []}, "generationConfig"),
    ({"contents": [{"parts": [{"text": "x"}]}], "tools": {"functionDeclarations": []}}, "tools"),
    ({"contents": [{"parts": [{"text": "x"}]}], "tools": [{"functionDeclarations": 1}]}, "tools[0].functionDeclarations"),
    ({"contents": [{"parts": [{"text": "x"}]}], "toolConfig": {"functionCallingConfig": "ANY"}},
     "toolConfig.functionCallingConfig"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "field"), BAD_BODIES)
def test_malformed_bodies_are_a_gemini_400_naming_the_field(
    gateway: Any, alice_key: Any, fake: FakeOpenAI, body: dict[str, Any], field: str
) -> None:
    response = httpx.post(f"{gateway.url}/gemini/v1beta/models/gpt-4o-mini:generateContent",
                          headers={"x-goog-api-key": alice_key[1]}, json=body)  # fmt: skip
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT" and f"'{field}'" in error["message"]
    assert fake.requests == []  # refused before any upstream call
