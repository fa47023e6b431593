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
