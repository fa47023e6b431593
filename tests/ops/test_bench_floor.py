"""bench/floor.py, the bare relay the gateway benchmark measures as the floor: it must relay for real.

Its figures only mean something if it does the same work on the wire as the gateway: the request to
the upstream with the client's key, the answer back as it came, a stream event for event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import orjson
import pytest

from bench import floor
from tests.fakes.openai_upstream import FakeOpenAI

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello benchmark"}]}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def client(fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    monkeypatch.setenv("FLOOR_UPSTREAM", fake.base_url)
    transport = httpx.ASGITransport(app=floor.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://floor") as http:
        yield http
    if floor._session is not None:  # one session per event loop: this test's loop ends here
        await floor._session.close()
        floor._session = None


async def test_it_relays_a_chat_completion_with_the_clients_key(
    client: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    response = await client.post(
        "/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {fake.api_key}"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    answer = response.json()
    assert answer["choices"][0]["message"]["content"] == "Echo: hello benchmark"
    assert answer["usage"]["total_tokens"] > 0
    assert fake.last_request.body == BODY


async def test_it_relays_a_stream_event_for_event(client: httpx.AsyncClient, fake: FakeOpenAI) -> None:
    body = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    async with httpx.AsyncClient() as direct:
        expected = await direct.post(f"{fake.base_url}/chat/completions", json=body, headers=headers)
    relayed = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert relayed.status_code == 200
    assert relayed.headers["content-type"].startswith("text/event-stream")
    events = relayed.content.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    usage = orjson.loads(events[-3].removeprefix(b"data: "))
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 3
    # The same events as the fake sends directly, but for their ids and timestamps.
    assert len(events) == len(expected.content.split(b"\n\n"))


async def test_the_upstreams_refusal_comes_back_as_it_was(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/chat/completions", json=BODY, headers={"Authorization": "Bearer sk-wrong"}
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
