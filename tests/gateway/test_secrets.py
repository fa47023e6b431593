"""No provider key (and no issued key) ever appears in a response, a log line or a database row."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from django.apps import apps

from tests.fakes.openai_upstream import FakeOpenAI


def _database_dump() -> str:
    parts = []
    for model in apps.get_models():
        for row in model._default_manager.all().values():
            parts.append(repr(row))
    return "\n".join(parts)


def test_no_key_leaks_anywhere(
    gateway: Any, alice_key: Any, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    headers = {"Authorization": f"Bearer {alice_key[1]}"}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    responses = [httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers)]
    # An upstream that echoes our provider key, its own URL and an internal host in its error.
    leak = f"Incorrect API key provided: {fake.api_key}. See {fake.base_url}/keys on host {fake.url.split('//')[1]}"
    for status in (400, 401, 500):
        fake.fail_next(
            status,
            body={
                "error": {
                    "message": leak,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": fake.api_key,
                }
            },
        )
        responses.append(httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers))
    assert [r.status_code for r in responses] == [200, 400, 502, 502]
    secrets = [fake.api_key, alice_key[1]]
    host = fake.url.split("//")[1]
    for response in responses:
        text = response.text + repr(dict(response.headers))
        for secret in secrets:
            assert secret not in text
        assert host not in text
    relayed = responses[1].json()["error"]["message"]
    assert "Incorrect API key provided" in relayed and "[redacted]" in relayed
    logs = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    for secret in secrets:
        assert secret not in logs
    dump = _database_dump()
    assert fake.api_key not in dump
    # Not even a 12-character piece of the issued key is stored.
    plaintext = alice_key[1]
    assert all(plaintext[i : i + 12] not in dump for i in range(len(plaintext) - 11))


def _every_text_value() -> str:
    """Every text-like column of every table, read with SQL (tables without a model included)."""
    from django.db import connection

    parts = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            for row in cursor.fetchall():
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        parts.append(bytes(value).decode("latin-1"))
                    elif value is not None and not isinstance(value, int | float):
                        parts.append(str(value))
    return "\n".join(parts)


def test_a_keys_plaintext_is_nowhere_after_its_whole_life(
    gateway: Any, alice_key: Any, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture, ledger: Any
) -> None:
    """Issued, used on every route, refused, rotated, revoked and refused again: no 12-character piece
    of any of its keys is in a table, a log line (DEBUG) or a response."""
    from gateway.models import ApiKey
    from gateway.services import key_issue, key_revoke, key_rotate

    caplog.set_level(logging.DEBUG)
    user, first = alice_key
    _, second = key_issue(name="second", user=user)
    base = gateway.url
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    calls = [
        ("POST", "/v1/chat/completions", {"Authorization": f"Bearer {first}"}, chat),
        ("POST", "/v1/chat/completions", {"Authorization": f"Bearer {first}"}, {**chat, "stream": True}),
        ("POST", "/v1/chat/completions", {"Authorization": f"Bearer {first}"}, {"model": "gpt-4.1", "messages": []}),
        ("POST", "/v1/embeddings", {"api-key": first}, {"model": "text-embedding-3-small", "input": "hi"}),
        ("GET", "/v1/models", {"Authorization": f"Bearer {first}"}, None),
        ("POST", "/anthropic/v1/messages", {"x-api-key": first}, {**chat, "max_tokens": 5}),
        ("POST", "/gemini/v1beta/models/gpt-4o-mini:generateContent", {"x-goog-api-key": first},
         {"contents": [{"parts": [{"text": "hi"}]}]}),
        ("GET", "/api/prompts/", {"Authorization": f"Bearer {first}"}, None),
        ("GET", "/api/quotas/rules", {"Authorization": f"Bearer {first}"}, None),
        ("GET", "/v1/transcriptions", {"Authorization": f"Bearer {first}"}, None),
        ("POST", "/v1/chat/completions", {"Authorization": f"Bearer {first}x"}, chat),  # one character off
    ]  # fmt: skip
    responses = [httpx.request(m, base + path, headers=h, json=b) for m, path, h, b in calls]
    assert [r.status_code for r in responses][:2] == [200, 200]
    old = ApiKey.objects.get(user=user, name="alice's key")
    _, third = key_rotate(key=old)
    key_revoke(key=ApiKey.objects.get(user=user, name="second"))
    import time

    time.sleep(0.3)  # the change signal reaches the gateway's key cache
    for key in (second, third):
        for path in ("/v1/chat/completions", "/v1/transcriptions"):
            responses.append(httpx.post(base + path, headers={"Authorization": f"Bearer {key}"}, json=chat))
    assert responses[-4].status_code == 401  # the revoked key, refused (an audit row written)
    ledger(7)  # the seven calls past authentication on the proxy routes
    plaintexts = [first, second, third]
    pieces = {k[i : i + 12] for k in plaintexts for i in range(len(k) - 11)}
    dump = _every_text_value()
    logs = "\n".join(
        r.getMessage() + (r.exc_text or "") + repr(r.__dict__.get("args")) for r in caplog.records
    )
    bodies = "\n".join(r.text + repr(dict(r.headers)) for r in responses)
    for where, text in (("database", dump), ("logs", logs), ("responses", bodies)):
        leaked = [p for p in pieces if p in text]
        assert not leaked, f"a piece of a key in the {where}: {leaked[:3]}"
    assert ApiKey.objects.filter(user=user).count() >= 2  # the scan saw the key rows
