"""A revoked key is refused by every server process within about a second."""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Any

import httpx
import pytest

from gateway.models import ApiKey
from gateway.services import key_revoke
from tests.support.processes import child_env, free_port, manage, running

pytestmark = pytest.mark.slow

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def test_revocation_reaches_every_process_within_a_second(catalog: Any, alice_key: Any) -> None:
    headers = {"Authorization": f"Bearer {alice_key[1]}"}
    with ExitStack() as stack:
        urls = []
        for _ in range(2):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            stack.enter_context(
                running(
                    manage("serve", "--no-migrate", "--no-worker", "--port", str(port)),
                    child_env(),
                    url=f"{url}/livez",
                )
            )
            urls.append(url)
        for url in urls:  # warm: each process has the key in its cache
            assert (
                httpx.post(f"{url}/v1/chat/completions", json=BODY, headers=headers, timeout=10).status_code
                == 200
            )
        key_revoke(key=ApiKey.objects.get(user=alice_key[0]))
        revoked_at = time.monotonic()
        pending = set(urls)
        took = {}
        while pending and time.monotonic() - revoked_at < 5:
            for url in list(pending):
                response = httpx.post(f"{url}/v1/chat/completions", json=BODY, headers=headers, timeout=10)
                if response.status_code == 401:
                    assert response.json()["error"]["code"] == "key_revoked"
                    took[url] = time.monotonic() - revoked_at
                    pending.discard(url)
            time.sleep(0.05)
        assert not pending, "some process kept accepting the revoked key"
        assert max(took.values()) < 1.5, took
