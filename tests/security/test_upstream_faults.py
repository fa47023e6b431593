"""Upstream faults: each ends with the documented client-visible result, the ledger charged exactly
what was delivered, and every reservation released (the counters equal the ledger afterwards).

The faults come from a real server on loopback (tests/fakes/fault_upstream.py), chosen per
deployment by its provider model; the fallback, where one is configured, is the fake OpenAI.
Quota rules on requests, tokens and cost are on in every test, so admission reserves the worst
case and settlement must bring each counter back to what the ledger says.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest
from django.contrib.auth.models import User

from gateway import tokens
from gateway.models import Deployment, Provider
from quotas.models import QuotaRule, UsageEvent
from quotas.reports import counter_value
from tests.fakes.fault_upstream import FaultUpstream, FullBacklog
from tests.fakes.openai_upstream import FakeOpenAI

HELLO = [{"role": "user", "content": "hi"}]
CONNECT, FIRST_BYTE, CHUNK, TOTAL = 0.3, 0.6, 1.5, 2.5  # the faulty deployment's timeouts (seconds)


@pytest.fixture
def faults() -> Iterator[FaultUpstream]:
    with FaultUpstream(byte_interval=1.0) as server:  # trickles one byte per second
        yield server


@pytest.fixture
def rules(alice_key: tuple[User, str]) -> list[QuotaRule]:
    """Rules far from their limits: the point is what admission reserves and settlement gives back."""
    user = alice_key[0]
    return [
        QuotaRule.objects.create(subject_type="user", user=user, metric=metric, window="day", limit=limit)
        for metric, limit in (
            ("requests", Decimal(1000)),
            ("tokens", Decimal(1_000_000)),
            ("cost_usd", Decimal(100)),
        )
    ]


@pytest.fixture
def route(catalog: dict[str, Any], faults: FaultUpstream, rules: Any) -> Callable[..., Provider]:
    """Make a faulty deployment the primary of gpt-4o-mini; the fake stays as fallback or goes."""

    def make(mode: str, *, fallback: bool, base_url: str | None = None) -> Provider:
        provider = Provider.objects.create(
            name="faulty", kind="openai_compatible", base_url=base_url or faults.base_url,
            connect_timeout_seconds=CONNECT, timeout_seconds=TOTAL,
        )  # fmt: skip
        mini = catalog["mini"]
        if fallback:
            Deployment.objects.filter(model=mini).update(priority=1)
        else:
            Deployment.objects.filter(model=mini).delete()
        Deployment.objects.create(model=mini, provider=provider, provider_model=mode, priority=0,
                                  first_byte_timeout=FIRST_BYTE, chunk_timeout=CHUNK)  # fmt: skip
        time.sleep(0.3)  # the change signal reaches the gateway
        return provider

    return make


def rows_settled(user: User, rules: list[QuotaRule], count: int, ledger: Any) -> list[UsageEvent]:
    """The ``count`` ledger rows, once each counter equals their totals (no reservation left over)."""
    rows = ledger(count)
    assert len(rows) == count
    time.sleep(0.2)  # a further (wrong) row would have arrived by now
    assert UsageEvent.objects.count() == count
    expected = {
        "requests": float(count),
        "tokens": float(sum(r.prompt_tokens + r.completion_tokens for r in rows)),
        "cost_usd": float(sum(r.cost_usd for r in rows)),
    }
    for rule in rules:
        assert counter_value(rule, f"u{user.pk}") == pytest.approx(expected[rule.metric], abs=1e-9), (
            rule.metric
        )
    return rows


def client(gateway: Any, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


def chat(sdk: openai.OpenAI, stream: bool) -> tuple[str, Any]:
    """The reply text and the usage the client saw (streams ask for usage to see it)."""
    if not stream:
        completion = sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
        return completion.choices[0].message.content or "", completion.usage
    text, usage = "", None
    for chunk in sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True,  # type: ignore[arg-type]
                                             stream_options={"include_usage": True}):  # fmt: skip
        text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
        usage = chunk.usage or usage
    return text, usage


# Faults before anything reached the client: (mode, stream, status, code). The last three are
# non-streaming answers whose body breaks off, stalls or trickles: nothing was relayed yet either.
BEFORE_FIRST_BYTE = {
    "connect_timeout": ("connect", True, 504, "upstream_timeout"),
    "first_byte_timeout": ("silent", False, 504, "upstream_timeout"),
    "first_chunk_timeout": ("headers_then_silent", True, 504, "upstream_timeout"),
    "reset_before_answer": ("reset", True, 502, "upstream_unreachable"),
    "reset_mid_body": ("reset_after:40", False, 502, "upstream_unreachable"),
    "stall_mid_body": ("stall_after:40", False, 504, "upstream_timeout"),
    "trickle_mid_body": ("trickle_after:40", False, 504, "upstream_timeout"),
}


@pytest.mark.parametrize("fallback", [False, True], ids=["alone", "with_fallback"])
@pytest.mark.parametrize("case", list(BEFORE_FIRST_BYTE))
def test_a_fault_before_the_first_byte_is_a_clean_error_or_a_silent_fallback(
    gateway: Any, alice_key: Any, route: Any, faults: FaultUpstream, fake: FakeOpenAI, rules: Any,
    ledger: Any, case: str, fallback: bool,
) -> None:  # fmt: skip
    mode, stream, status, code = BEFORE_FIRST_BYTE[case]
    with FullBacklog() as backlog:
        route(mode, fallback=fallback, base_url=backlog.base_url if mode == "connect" else None)
        sdk = client(gateway, alice_key[1])
        started = time.monotonic()
        if fallback:
            text, usage = chat(sdk, stream)
            assert text == "Echo: hi"
        else:
            with pytest.raises(openai.APIStatusError) as exc:
                chat(sdk, stream)
            assert (exc.value.status_code, exc.value.code) == (status, code)
        elapsed = time.monotonic() - started
    [row] = rows_settled(alice_key[0], rules, 1, ledger)
    # The primary was tried once (a connect that never completes sends no request at all).
    assert len(faults.requests) == (0 if mode == "connect" else 1)
    assert elapsed < TOTAL + 1.5
    if fallback:
        assert len(fake.requests) == 1
        assert (row.status, row.provider, row.error_kind) == (200, "local", "")
        assert (row.prompt_tokens, row.completion_tokens) == (usage.prompt_tokens, usage.completion_tokens)
        assert row.tokens_estimated is False and row.cost_usd > 0
    else:
        assert (row.status, row.error_kind, row.provider) == (status, code, "faulty")
        assert (row.prompt_tokens, row.completion_tokens, row.cost_usd) == (0, 0, 0)  # nothing delivered


# Faults once the stream has begun: (mode, ledger status, ledger error kind, code of the SSE error).
MID_STREAM = {
    "reset_mid_stream": ("reset_after:3", 502, "upstream_stream_broken", "upstream_stream_broken"),
    "stall_mid_stream": ("stall_after:3", 502, "upstream_stream_broken", "upstream_stream_broken"),
    # One byte a second keeps the between-chunks timeout from firing: the total timeout ends it.
    "trickle_stream": ("trickle_after:3", 504, "upstream_timeout_mid_stream", "upstream_timeout"),
}


@pytest.mark.parametrize("case", list(MID_STREAM))
def test_a_fault_mid_stream_ends_it_with_an_error_event_charged_for_what_was_delivered(
    gateway: Any, alice_key: Any, route: Any, faults: FaultUpstream, fake: FakeOpenAI, rules: Any,
    ledger: Any, case: str,
) -> None:  # fmt: skip
    mode, status, kind, code = MID_STREAM[case]
    route(mode, fallback=True)  # a fallback exists, but after the first byte it must not be used
    received = ""
    started = time.monotonic()
    with pytest.raises(openai.APIError) as exc:
        for chunk in client(gateway, alice_key[1]).chat.completions.create(model="gpt-4o-mini", messages=HELLO,  # type: ignore[arg-type]
                                                                            stream=True):  # fmt: skip
            received += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    elapsed = time.monotonic() - started
    assert not isinstance(exc.value, openai.APIStatusError)  # a 200 stream that ends in an error event
    assert exc.value.code == code
    assert received == " w0 w1 w2"  # the three events sent before the fault, and nothing else
    [row] = rows_settled(alice_key[0], rules, 1, ledger)
    assert (row.status, row.error_kind, row.provider, row.streamed) == (status, kind, "faulty", True)
    assert fake.requests == [] and len(faults.requests) == 1
    # Charged as the gateway counts a stream without usage: what it relayed, with tiktoken.
    assert row.tokens_estimated is True
    assert row.completion_tokens == tokens.count_text(received) > 0
    assert row.prompt_tokens == tokens.count_prompt("chat/completions", {"messages": HELLO})
    expected_cost = (
        Decimal(row.prompt_tokens) * Decimal("0.15") + Decimal(row.completion_tokens) * Decimal("0.60")
    ) / 10**6
    assert row.cost_usd == expected_cost
    if case == "trickle_stream":
        assert TOTAL - 0.2 < elapsed < TOTAL + 1.5
    # The gateway let go of the upstream connection (no stalled socket kept open).
    deadline = time.monotonic() + 5
    while faults.open_connections() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert faults.open_connections() == 0


@pytest.mark.parametrize("fallback", [False, True], ids=["alone", "with_fallback"])
def test_a_429_with_retry_after_keeps_the_deployment_out_of_rotation(
    gateway: Any, alice_key: Any, route: Any, faults: FaultUpstream, fake: FakeOpenAI, rules: Any,
    ledger: Any, fallback: bool,
) -> None:  # fmt: skip
    route("status:429:30", fallback=fallback)
    sdk = client(gateway, alice_key[1])
    if fallback:
        assert chat(sdk, False)[0] == chat(sdk, True)[0] == "Echo: hi"
        assert len(fake.requests) == 2
    else:
        with pytest.raises(openai.RateLimitError) as first:
            chat(sdk, False)
        assert first.value.response.headers["retry-after"] == "30"  # the provider's own 429, relayed
        with pytest.raises(openai.RateLimitError) as second:
            chat(sdk, True)
        assert second.value.code == "upstream_rate_limited"
        assert 28 <= int(second.value.response.headers["retry-after"]) <= 31
    assert len(faults.requests) == 1  # the second request did not go to the rate-limited deployment
    rows = rows_settled(alice_key[0], rules, 2, ledger)
    if fallback:
        assert [(r.status, r.provider) for r in rows] == [(200, "local")] * 2
    else:
        assert [(r.status, r.error_kind) for r in rows] == [
            (429, "rate_limit_exceeded"),
            (429, "upstream_rate_limited"),
        ]
        assert sum(r.prompt_tokens + r.completion_tokens for r in rows) == 0


@pytest.mark.parametrize("fallback", [False, True], ids=["alone", "with_fallback"])
def test_a_burst_of_5xx_opens_the_circuit(
    gateway: Any, alice_key: Any, route: Any, faults: FaultUpstream, fake: FakeOpenAI, rules: Any,
    ledger: Any, settings: Any, fallback: bool,
) -> None:  # fmt: skip
    settings.GATEWAY_CIRCUIT_FAILURES = 3
    settings.GATEWAY_CIRCUIT_COOLDOWN = 60
    route("status:503", fallback=fallback)
    sdk = client(gateway, alice_key[1])
    seen = []
    for i in range(6):
        try:
            seen.append(chat(sdk, stream=i % 2 == 1)[0])
        except openai.APIStatusError as exc:
            seen.append((exc.status_code, exc.code))
    assert len(faults.requests) == 3  # then the circuit is open: no more calls to the failing deployment
    rows = rows_settled(alice_key[0], rules, 6, ledger)
    if fallback:
        assert seen == ["Echo: hi"] * 6
        assert [(r.status, r.provider) for r in rows] == [(200, "local")] * 6
    else:
        assert seen == [(502, "upstream_error")] * 3 + [(503, "deployments_unavailable")] * 3
        assert [r.status for r in rows] == [502] * 3 + [503] * 3
        assert sum(r.prompt_tokens + r.completion_tokens for r in rows) == 0
