"""Playground over HTTP: parameters reach the provider, panels stream in parallel with their
metrics, bad input is a message, and "view code" shows this gateway's URL and no key."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User

from quotas.models import UsageEvent
from tests.fakes.openai_upstream import FakeOpenAI
from tests.portal.conftest import events
from tests.support.live import LiveServer

pytestmark = pytest.mark.django_db(transaction=True)

FORM = {
    "system": "You are terse.",
    "msg-role": ["user", "assistant", "user"],
    "msg-content": ["Hi", "Hello!", "Tell me a joke"],
    "p0-model": "gpt-4o-mini",
    "p0-temperature": "0.3",
    "p0-top_p": "0.9",
    "p0-max_tokens": "3",
    "p0-presence_penalty": "0.5",
    "p0-frequency_penalty": "-0.5",
    "p0-seed": "42",
    "p0-stop": "END\nSTOP",
    "p0-json": "1",
    "p1-model": "gpt-4o",
}


def run(client: httpx.Client, form: dict[str, Any], panel: int) -> tuple[list[str], dict[str, Any]]:
    deltas: list[str] = []
    done: dict[str, Any] = {}
    with client.stream("POST", "/playground/run/", data={**form, "panel": str(panel)}) as response:
        assert response.status_code == 200
        for kind, data in events(response):
            if kind == "delta":
                deltas.append(data["t"])
            else:
                done = data
    return deltas, done


def test_every_parameter_reaches_the_provider(
    alice_http: httpx.Client, alice: User, fake: FakeOpenAI
) -> None:
    deltas, done = run(alice_http, FORM, 0)
    body = fake.last_request.body
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Tell me a joke"},
    ]
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["seed"]) == (0.3, 0.9, 3, 42)
    assert (body["presence_penalty"], body["frequency_penalty"]) == (0.5, -0.5)
    assert body["stop"] == ["END", "STOP"] and body["response_format"] == {"type": "json_object"}
    assert body["stream"] is True
    assert len(deltas) == 3 and done["status"] == "complete" and done["finish_reason"] == "length"
    assert done["completion_tokens"] == 3 and done["prompt_tokens"] > 0 and float(done["cost_usd"]) > 0
    assert done["latency_ms"] >= 0 and done["ttft_ms"] is not None and done["model"] == "gpt-4o-mini"


def test_two_panels_stream_in_parallel_and_are_each_accounted(
    portal: LiveServer, alice_http: httpx.Client, alice: User, fake: FakeOpenAI, ledger: Any
) -> None:
    fake.behaviour(chunk_delay_ms=60, stream_words=10)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(run, alice_http, FORM | {"p0-max_tokens": ""}, panel) for panel in (0, 1)]
        (d0, m0), (d1, m1) = (f.result() for f in futures)
    assert len(d0) == len(d1) == 10
    assert (m0["model"], m1["model"]) == ("gpt-4o-mini", "gpt-4o")
    # In parallel: together they took about as long as one (10 chunks × 60 ms each).
    assert m0["elapsed_ms"] < 1500 and m1["elapsed_ms"] < 1500
    rows = ledger(2, user=alice)
    assert sorted(r.model for r in rows) == ["gpt-4o", "gpt-4o-mini"]
    assert all(r.key_id is None and r.streamed for r in rows) and UsageEvent.objects.count() == 2


BAD_INPUT: list[tuple[dict[str, Any], str]] = [
    ({"p0-temperature": "7"}, "temperature must be between 0 and 2"),
    ({"p0-top_p": "abc"}, "top_p must be a number"),
    ({"msg-content": ["", "", ""]}, "Write at least one message"),
    ({"p0-stop": "a\nb\nc\nd\ne"}, "At most 4 stop sequences"),
    ({"msg-role": ["user", "wizard", "user"]}, "Unknown role"),
    ({"panel": "7"}, "No such panel"),
    ({"p0-model": "gpt-4.1"}, "not available to you"),  # refused by the gateway (403), before any call
]


def test_bad_input_is_a_message(alice_http: httpx.Client, fake: FakeOpenAI) -> None:
    for change, message in BAD_INPUT:
        change = dict(change)
        panel = int(change.pop("panel", 0))
        deltas, done = run(alice_http, FORM | change, panel)
        assert deltas == [] and done["status"] == "error" and message in done["error"], (change, done)
    assert fake.requests == []


def test_view_code_uses_this_gateway_and_a_placeholder_key(
    portal: LiveServer, alice_http: httpx.Client
) -> None:
    response = alice_http.post("/playground/code/", data=FORM, headers={"HX-Request": "true"})
    assert response.status_code == 200
    text = response.text
    base = f"{portal.url}/v1"
    assert text.count(base) >= 3 and "$LLM_API_KEY" in text and "LLM_API_KEY" in text
    assert "llmc-" not in text
    for fragment in ("curl", "chat/completions", "from", "openai", "OpenAI", "client", "process", "env",
                     "json_object", "temperature", "frequency_penalty", "Tell me a joke"):  # fmt: skip
        assert fragment in text, fragment
    assert 'class="highlight"' in text
    second = alice_http.post("/playground/code/", data={**FORM, "panel": "1"}).text
    assert "gpt-4o" in second and "gpt-4o-mini" not in second and "json_object" not in second


def test_snippets_are_valid_code() -> None:
    import ast
    import shlex

    from portal.playground import snippets

    body = {"model": "m", "messages": [{"role": "user", "content": 'it\'s "quoted"\nnew line'}], "seed": 1}
    found = snippets(body, "http://gw.example/v1")
    ast.parse(found["python"])
    words = shlex.split(found["curl"].replace("\\\n", " "))
    assert words[:2] == ["curl", "http://gw.example/v1/chat/completions"]
    import json

    assert json.loads(words[-1]) == body
    assert "process.env.LLM_API_KEY" in found["javascript"] and '"seed": 1' in found["javascript"]


def test_the_page_offers_allowed_models_and_the_prompt_library_button(alice_http: httpx.Client) -> None:
    page = alice_http.get("/playground/").text
    assert 'value="gpt-4o-mini"' in page and 'value="gpt-4.1"' not in page
    assert 'formaction="/prompts/from-playground/"' in page and 'name="csrfmiddlewaretoken"' in page
