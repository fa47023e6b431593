"""A client that leaves mid-stream cancels the upstream call and is charged for what it got."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.fakes.openai_upstream import FakeOpenAI


def test_disconnect_mid_stream_cancels_upstream_and_accounts_the_delivered_part(
    gateway: Any, alice_key: Any, fake: FakeOpenAI, ledger: Any
) -> None:
    fake.behaviour(chunk_delay_ms=200, stream_words=40)  # 8 s if read to the end
    received = b""
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", headers={"Authorization": f"Bearer {alice_key[1]}"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "long please"}], "stream": True},
        timeout=30,
    ) as response:  # fmt: skip
        for chunk in response.iter_raw():
            received += chunk
            if received.count(b'"content"') >= 4:
                break
    left_at = time.monotonic()
    [event] = ledger(1, timeout=5)
    # Settled right after the disconnect, not when the upstream would have finished.
    assert time.monotonic() - left_at < 3
    assert event.status == 499
    assert event.error_kind == "client_disconnected"
    assert event.latency_ms < 4000
    # Charged for what was delivered (a few words counted locally), not for the whole answer.
    assert 1 <= event.completion_tokens < 20
    assert event.tokens_estimated is True
    assert event.prompt_tokens > 0
