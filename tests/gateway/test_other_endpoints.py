"""Embeddings, models, responses, completions, moderations and images through the gateway."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI, embedding_for


def test_embeddings_float_and_base64(sdk: openai.OpenAI, ledger: Any) -> None:
    default = sdk.embeddings.create(model="text-embedding-3-small", input="the quick fox")  # SDK asks base64
    floats = sdk.embeddings.create(
        model="text-embedding-3-small", input="the quick fox", encoding_format="float"
    )
    expected = embedding_for("the quick fox")
    assert floats.data[0].embedding == pytest.approx(expected)
    assert default.data[0].embedding == pytest.approx(expected, rel=1e-6)
    events = ledger(2)
    assert [e.endpoint for e in events] == ["embeddings", "embeddings"]
    assert events[0].prompt_tokens == default.usage.prompt_tokens
    assert events[0].cost_usd == Decimal(default.usage.prompt_tokens) * Decimal("0.02") / Decimal(1_000_000)


def test_models_lists_only_what_the_caller_may_use(sdk: openai.OpenAI, alice_key: Any, ledger: Any) -> None:
    names = {m.id for m in sdk.models.list()}
    assert "gpt-4o-mini" in names and "gpt-4o" in names
    assert "gpt-4.1" not in names  # restricted to engineering; alice is not a member
    assert sdk.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("gpt-4.1")
    from django.contrib.auth.models import Group

    alice_key[0].groups.add(Group.objects.get(name="engineering"))
    # The change signal reaches the gateway's caches within a poll interval.
    import time

    deadline = time.monotonic() + 5
    while "gpt-4.1" not in {m.id for m in sdk.models.list()}:
        assert time.monotonic() < deadline, "group change never reached the gateway"
        time.sleep(0.1)
    assert ledger(3, endpoint="models")


def test_responses_non_streaming_and_streaming(sdk: openai.OpenAI, ledger: Any) -> None:
    response = sdk.responses.create(model="gpt-4o-mini", input="Say something")
    assert response.output_text.startswith("Echo:")
    assert response.usage is not None and response.usage.input_tokens > 0
    events = []
    with sdk.responses.stream(model="gpt-4o-mini", input="Say something") as stream:
        for event in stream:
            events.append(event.type)
        final = stream.get_final_response()
    assert "response.output_text.delta" in events and events[-1] == "response.completed"
    rows = ledger(2)
    assert rows[0].completion_tokens == response.usage.output_tokens
    assert rows[1].streamed is True
    assert final.usage is not None and rows[1].completion_tokens == final.usage.output_tokens


def test_legacy_completions_stream_and_not(sdk: openai.OpenAI, ledger: Any) -> None:
    completion = sdk.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="Say this is a test", max_tokens=5
    )
    assert completion.choices[0].text
    stream = sdk.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say this is a test", stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices)
    rows = ledger(2)
    assert rows[1].streamed and rows[1].completion_tokens > 0


def test_moderations(sdk: openai.OpenAI) -> None:
    result = sdk.moderations.create(model="omni-moderation-latest", input="I will kill the process")
    assert result.results[0].flagged is True


def test_images_are_accounted_per_image(sdk: openai.OpenAI, fake: FakeOpenAI, ledger: Any) -> None:
    result = sdk.images.generate(model="dall-e-3", prompt="a lighthouse", n=1, response_format="b64_json")
    assert result.data and result.data[0].b64_json
    [event] = ledger(1)
    assert event.images == 1
    assert event.cost_usd == Decimal("0.04")
