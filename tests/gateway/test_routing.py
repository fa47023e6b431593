"""Routing: fallback before the first byte, circuit breakers, data policies."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest
from django.contrib.auth.models import Group

from gateway.models import DataPolicy, Deployment, Provider
from gateway.services import key_issue
from tests.fakes.openai_upstream import FakeOpenAI

HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture
def backup(fake: FakeOpenAI, catalog: Any) -> Provider:
    """A second provider, in another region, with a deployment of gpt-4o-mini as priority 1."""
    dead = Provider(name="dead", kind="openai_compatible", base_url="http://127.0.0.1:9/v1", region="westeurope",
                    connect_timeout_seconds=0.5)  # fmt: skip
    dead.save()
    mini = catalog["mini"]
    Deployment.objects.filter(model=mini).update(priority=1)  # the fake becomes the fallback
    Deployment.objects.create(model=mini, provider=dead, provider_model="gpt-4o-mini", priority=0)
    local = catalog["local"]
    local.region = "eastus"
    local.save()
    time.sleep(0.3)
    return dead


def test_a_dead_primary_falls_back_with_no_client_visible_error(
    sdk: openai.OpenAI, backup: Provider, ledger: Any, settings: Any
) -> None:
    settings.GATEWAY_CIRCUIT_FAILURES = 2
    for _ in range(4):
        assert sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices[0].message.content  # type: ignore[arg-type]
    events = ledger(4)
    assert {e.provider for e in events} == {"local"}
    from gateway import routing

    # The breaker opened after two failures: later requests no longer try the dead deployment first.
    dead_id = Deployment.objects.get(provider=backup).id
    assert routing.BREAKERS[dead_id].state == routing.OPEN
    assert events[-1].latency_ms < events[0].latency_ms + 400


def test_fallback_chains_cross_models(
    sdk: openai.OpenAI, catalog: Any, fake: FakeOpenAI, ledger: Any
) -> None:
    mini = catalog["mini"]
    mini.fallbacks = ["gpt-4o"]
    mini.save()
    Deployment.objects.filter(model=mini).update(provider=Provider.objects.create(
        name="down", kind="openai_compatible", base_url="http://127.0.0.1:9/v1", connect_timeout_seconds=0.5))  # fmt: skip
    time.sleep(0.3)
    completion = sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == "Echo: hi"
    assert fake.requests[-1].flavour == "azure"  # served by gpt-4o on the Azure-style provider
    [event] = ledger(1)
    assert event.model == "gpt-4o" and event.provider == "azure-eu"


def test_non_retryable_errors_are_not_retried(sdk: openai.OpenAI, backup: Provider, fake: FakeOpenAI) -> None:
    Deployment.objects.filter(provider=backup).update(priority=2)  # the fake first, the dead one after
    time.sleep(0.3)
    fake.fail_next(400)
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
    assert len(fake.requests) == 1


def test_a_5xx_before_the_first_byte_moves_on(sdk: openai.OpenAI, catalog: Any, fake: FakeOpenAI) -> None:
    second = Provider(name="second", kind="openai_compatible", base_url=fake.base_url)
    second.set_api_key(fake.api_key)
    second.save()
    Deployment.objects.create(
        model=catalog["mini"], provider=second, provider_model="gpt-4o-mini", priority=1
    )
    time.sleep(0.3)
    fake.fail_next(503)
    assert sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices  # type: ignore[arg-type]
    assert len(fake.requests) == 2  # one 503, one success: one retry, by the gateway only


def test_a_data_policy_keeps_requests_in_its_regions(
    gateway: Any, backup: Provider, engineering: Group, django_user_model: Any, fake: FakeOpenAI
) -> None:
    carol = django_user_model.objects.create_user("carol")
    carol.groups.add(engineering)
    DataPolicy.objects.create(group=engineering, allowed_regions=["westeurope"])
    _, key = key_issue(name="c", user=carol)
    time.sleep(0.3)
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
    # Only the (dead) westeurope deployment is allowed: never routed to eastus, so the call fails.
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
    assert exc.value.status_code == 502
    assert fake.requests == []
    # A model with no deployment in the allowed regions is a clear 403.
    response = httpx.post(f"{gateway.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                          json={"model": "text-embedding-3-small", "messages": HELLO})  # fmt: skip
    assert response.status_code == 403 and response.json()["error"]["code"] == "policy_denied"
    assert "westeurope" in response.json()["error"]["message"]


def test_a_key_policy_only_narrows(gateway: Any, backup: Provider, alice_key: Any) -> None:
    _, narrow = key_issue(name="eu", user=alice_key[0])
    from gateway.models import ApiKey

    ApiKey.objects.filter(name="eu").update(allowed_providers=["local"])
    time.sleep(0.3)
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=narrow, max_retries=0)
    assert client.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices  # type: ignore[arg-type]


def test_a_connection_reset_mid_stream_is_not_retried_and_is_charged_for_what_arrived(
    gateway: Any, alice_key: Any, fake: FakeOpenAI, ledger: Any
) -> None:
    fake.behaviour(drop_mid_stream=3, stream_words=10)
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=alice_key[1], max_retries=0)
    received = ""
    with pytest.raises(openai.APIError):
        for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True):  # type: ignore[arg-type]
            received += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    assert len(fake.requests) == 1  # after the first byte there is no retry
    [event] = ledger(1)
    assert event.status == 502 and event.error_kind == "upstream_stream_broken"
    assert 0 < event.completion_tokens < 10


def test_a_slow_stream_hits_the_between_chunks_timeout(
    gateway: Any, alice_key: Any, fake: FakeOpenAI, catalog: Any, ledger: Any
) -> None:
    for dep in Deployment.objects.filter(model=catalog["mini"]):
        dep.chunk_timeout = 0.3
        dep.save()
    time.sleep(0.3)
    fake.behaviour(chunk_delay_ms=1000, stream_words=5)
    started = time.monotonic()
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", headers={"Authorization": f"Bearer {alice_key[1]}"},
                      json={"model": "gpt-4o-mini", "messages": HELLO, "stream": True}, timeout=30) as response:  # fmt: skip
        body = b"".join(response.iter_raw())
    assert time.monotonic() - started < 3
    assert b"[DONE]" not in body
    [event] = ledger(1)
    assert event.status in (502, 504)


def test_a_first_byte_timeout_moves_on_to_the_next_deployment(
    sdk: openai.OpenAI, catalog: Any, fake: FakeOpenAI
) -> None:
    slow = Provider(name="slow", kind="openai_compatible", base_url=fake.base_url)
    slow.set_api_key(fake.api_key)
    slow.save()
    Deployment.objects.create(model=catalog["mini"], provider=slow, provider_model="gpt-4o-mini", priority=1)
    for dep in Deployment.objects.filter(model=catalog["mini"]):
        dep.first_byte_timeout = 0.3
        dep.save()
    time.sleep(0.3)
    fake.behaviour(latency_ms=1000)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as exc:  # both wait 1 s: both time out at 0.3 s
        sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
    assert exc.value.status_code == 504
    assert time.monotonic() - started < 2.5
    assert len(fake.requests) == 2  # tried the primary, then the fallback, then gave up


def test_deployment_health_is_shown_to_admins(
    sdk: openai.OpenAI, backup: Provider, django_user_model: Any
) -> None:
    from django.test import Client

    for _ in range(2):
        sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
    admin = django_user_model.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.force_login(admin)
    page = client.get("/admin/gateway/deployment/").content.decode()
    assert "errors (5 min)" in page.lower() or "Errors (5 min)" in page
    assert "100% of" in page  # the dead deployment's recent error rate


def test_taking_the_primary_down_mid_test_moves_traffic_to_the_fallback(
    sdk: openai.OpenAI, catalog: Any, fake: FakeOpenAI, settings: Any, ledger: Any
) -> None:
    settings.GATEWAY_CIRCUIT_FAILURES = 1
    settings.GATEWAY_CIRCUIT_COOLDOWN = 0.5
    primary = FakeOpenAI().start()
    port = primary.port
    try:
        first = Provider(
            name="primary", kind="openai_compatible", base_url=primary.base_url, connect_timeout_seconds=0.5
        )
        first.set_api_key(primary.api_key)
        first.save()
        Deployment.objects.filter(model=catalog["mini"]).update(
            priority=1
        )  # the session fake is the fallback
        Deployment.objects.create(
            model=catalog["mini"], provider=first, provider_model="gpt-4o-mini", priority=0
        )
        time.sleep(0.3)
        for _ in range(3):
            sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
        assert len(primary.requests) == 3 and fake.requests == []
        primary.stop()  # the primary goes down
        for _ in range(5):  # no client-visible error
            assert sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices  # type: ignore[arg-type]
        assert len(fake.requests) == 5
        # It comes back: after the cooldown one probe finds it healthy and the circuit closes.
        primary = FakeOpenAI(port=port).start()
        time.sleep(0.6)
        for _ in range(3):
            sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # type: ignore[arg-type]
        assert len(primary.requests) == 3
    finally:
        primary.stop()
    providers = [e.provider for e in ledger(11)]
    assert providers == ["primary"] * 3 + ["local"] * 5 + ["primary"] * 3
