"""`Idempotency-Key` on POST /v1/*: a retried request reaches the provider once and is answered alike."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import httpx
import openai
import orjson
import pytest
from django.contrib.auth.models import User
from django.test import override_settings
from openai.types.chat import ChatCompletionMessageParam

from gateway.services import key_issue
from quotas.models import UsageEvent
from tests.fakes.openai_upstream import FakeOpenAI

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def _key() -> dict[str, str]:
    return {"Idempotency-Key": f"test-{uuid.uuid4().hex}"}


def _settled(ledger: Any, count: int) -> int:
    """The ledger's row count once the buffer had time to write more than ``count`` (it must not)."""
    ledger(count)
    time.sleep(0.4)
    return UsageEvent.objects.count()


def test_a_repeated_chat_completion_is_answered_once(
    sdk: openai.OpenAI, fake: FakeOpenAI, ledger: Any
) -> None:
    headers = _key()
    first = sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO, extra_headers=headers
    )
    second = sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO, extra_headers=headers
    )
    assert len(fake.requests) == 1
    assert first.status_code == second.status_code == 200
    assert second.http_response.content == first.http_response.content
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert second.headers["x-request-id"] != first.headers["x-request-id"]
    assert _settled(ledger, 1) == 1


def test_a_repeated_stream_replays_the_same_sse_bytes(
    gateway: Any, alice_key: Any, fake: FakeOpenAI, ledger: Any, sdk: openai.OpenAI
) -> None:
    headers = {"Authorization": f"Bearer {alice_key[1]}", **_key()}
    body = {"model": "gpt-4o-mini", "messages": HELLO, "stream": True}
    url = f"{gateway.url}/v1/chat/completions"
    first = httpx.post(url, json=body, headers=headers)
    second = httpx.post(url, json=body, headers=headers)
    assert first.status_code == second.status_code == 200
    assert second.headers["content-type"].startswith("text/event-stream")
    assert b"data: [DONE]" in first.content
    assert second.content == first.content
    assert second.headers["idempotent-replayed"] == "true"
    assert len(fake.requests) == 1
    # The SDK reads the replayed stream like the original.
    sdk_key = {"Idempotency-Key": headers["Idempotency-Key"]}
    again = sdk.chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, stream=True, extra_headers=sdk_key
    )
    text = "".join(c.choices[0].delta.content or "" for c in again if c.choices)
    assert text == "".join(
        orjson.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        for line in first.content.decode().splitlines()
        if line.startswith("data: {") and orjson.loads(line[6:]).get("choices")
    )
    assert len(fake.requests) == 1
    assert _settled(ledger, 1) == 1


@pytest.mark.parametrize("endpoint", ["embeddings", "responses", "completions", "responses-stream"])
def test_other_endpoints_are_idempotent_too(
    sdk: openai.OpenAI, fake: FakeOpenAI, ledger: Any, endpoint: str
) -> None:
    headers = _key()

    def once() -> bytes:
        if endpoint == "embeddings":
            raw: Any = sdk.embeddings.with_raw_response.create(
                model="text-embedding-3-small", input="hello", extra_headers=headers
            )
        elif endpoint == "responses":
            raw = sdk.responses.with_raw_response.create(
                model="gpt-4o-mini", input="hi", extra_headers=headers
            )
        elif endpoint == "responses-stream":
            with sdk.responses.with_streaming_response.create(
                model="gpt-4o-mini", input="hi", stream=True, extra_headers=headers
            ) as streamed:
                return b"".join(streamed.iter_bytes())
        else:
            raw = sdk.completions.with_raw_response.create(
                model="gpt-3.5-turbo-instruct", prompt="hi", extra_headers=headers
            )
        assert raw.status_code == 200
        return bytes(raw.http_response.content)

    assert once() == once()
    assert len(fake.requests) == 1
    assert _settled(ledger, 1) == 1


def test_keys_are_scoped_per_caller(
    sdk: openai.OpenAI, gateway: Any, fake: FakeOpenAI, bob: User, ledger: Any
) -> None:
    headers = _key()
    _, bob_key = key_issue(name="bob's key", user=bob)
    bobs = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=bob_key, max_retries=0)
    sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO, extra_headers=headers)
    replay = bobs.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO, extra_headers=headers
    )
    assert "idempotent-replayed" not in replay.headers
    assert len(fake.requests) == 2
    assert _settled(ledger, 2) == 2


def test_the_same_key_with_another_body_is_refused(sdk: openai.OpenAI, fake: FakeOpenAI) -> None:
    headers = _key()
    sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO, extra_headers=headers)
    with pytest.raises(openai.UnprocessableEntityError) as exc:
        sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "other"}], extra_headers=headers
        )
    assert exc.value.code == "idempotency_key_reused"
    assert exc.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(openai.UnprocessableEntityError):  # another route is another request
        sdk.embeddings.create(model="text-embedding-3-small", input="hi", extra_headers=headers)
    assert len(fake.requests) == 1


def test_errors_are_not_kept_so_a_retry_goes_upstream(sdk: openai.OpenAI, fake: FakeOpenAI) -> None:
    headers = _key()
    fake.fail_next(400, body={"error": {"message": "bad", "type": "invalid_request_error", "param": None,
                                        "code": "invalid_value"}})  # fmt: skip
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO, extra_headers=headers)
    time.sleep(0.1)  # the failed request's claim is released in the background
    ok = sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO, extra_headers=headers
    )
    assert ok.status_code == 200 and "idempotent-replayed" not in ok.headers
    assert len(fake.requests) == 2
    replay = sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO, extra_headers=headers
    )
    assert replay.headers["idempotent-replayed"] == "true"
    assert len(fake.requests) == 2


def test_a_response_over_the_size_limit_is_not_kept(sdk: openai.OpenAI, fake: FakeOpenAI) -> None:
    headers = _key()
    with override_settings(GATEWAY_IDEMPOTENCY_MAX_BYTES=100):
        for _ in range(2):
            raw = sdk.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=HELLO, extra_headers=headers
            )
            assert "idempotent-replayed" not in raw.headers
            time.sleep(0.1)
    assert len(fake.requests) == 2


def test_a_duplicate_in_flight_waits_briefly_then_gets_409(sdk: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.behaviour(latency_ms=2500)
    headers = _key()
    results: list[Any] = []
    first = threading.Thread(target=lambda: results.append(
        sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO, extra_headers=headers)))  # fmt: skip
    first.start()
    time.sleep(0.5)
    started = time.monotonic()
    with pytest.raises(openai.ConflictError) as exc:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO, extra_headers=headers)
    assert exc.value.code == "idempotency_in_progress"
    assert exc.value.response.headers["retry-after"] == "1"
    assert time.monotonic() - started >= 0.9  # it waited for the first before giving up
    first.join(10)
    assert results and len(fake.requests) == 1


def test_a_duplicate_in_flight_gets_the_first_answer_when_it_comes_soon(
    sdk: openai.OpenAI, fake: FakeOpenAI
) -> None:
    fake.behaviour(latency_ms=400)
    headers = _key()
    results: list[Any] = []
    first = threading.Thread(target=lambda: results.append(
        sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO, extra_headers=headers)))  # fmt: skip
    first.start()
    time.sleep(0.15)
    second = sdk.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO, extra_headers=headers
    )
    first.join(10)
    assert second.headers["idempotent-replayed"] == "true"
    assert second.parse().id == results[0].id
    assert len(fake.requests) == 1


def test_a_malformed_key_is_400(gateway: Any, alice_key: Any, fake: FakeOpenAI) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": HELLO},
        headers={"Authorization": f"Bearer {alice_key[1]}", "Idempotency-Key": "x" * 300},
    )  # fmt: skip
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_idempotency_key"
    assert fake.requests == []


def test_without_a_key_every_request_goes_upstream(sdk: openai.OpenAI, fake: FakeOpenAI) -> None:
    sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert len(fake.requests) == 2


@pytest.mark.redis
def test_with_redis_the_response_is_kept_there_for_the_ttl(
    sdk: openai.OpenAI, fake: FakeOpenAI, alice_key: Any, settings: Any
) -> None:
    import redis

    settings.GATEWAY_IDEMPOTENCY_TTL_SECONDS = 120
    headers = _key()
    sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO, extra_headers=headers)
    client = redis.Redis.from_url(settings.REDIS_URL)
    keys = client.keys(f"llmc:idem:{{k{alice_key[0].api_keys.get().pk}}}:*")
    assert len(keys) == 1
    deadline = time.monotonic() + 5  # kept just after the last byte went out
    while b'"s":"done"' not in (client.get(keys[0]) or b"") and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.02)
    assert b'"s":"done"' in client.get(keys[0])  # type: ignore[operator]
    assert 100 < client.ttl(keys[0]) <= 120
    # Another process (here: the same Redis seen by a second server) replays it.
    from tests.support.live import LiveServer

    with LiveServer() as other:
        second = openai.OpenAI(base_url=f"{other.url}/v1", api_key=alice_key[1], max_retries=0)
        raw = second.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=HELLO, extra_headers=headers
        )
    assert raw.headers["idempotent-replayed"] == "true"
    assert len(fake.requests) == 1
