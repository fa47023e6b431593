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


def test_a_dead_primary_falls_back_with_no_client_visible_error(sdk: openai.OpenAI, backup: Provider, ledger: Any, settings: Any) -> None:
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


def test_fallback_chains_cross_models(sdk: openai.OpenAI, catalog: Any, fake: FakeOpenAI, ledger: Any) -> None:
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
    Deployment.objects.create(model=catalog["mini"], provider=second, provider_model="gpt-4o-mini", priority=1)
    time.sleep(0.3)
    fake.fail_next(503)
    assert sdk.chat.completions.create(model="gpt-4o-mini", messages=HELLO).choices  # type: ignore[arg-type]
    assert len(fake.requests) == 2  # one 503, one success: one retry, by the gateway only


def test_a_data_policy_keeps_requests_in_its_regions(gateway: Any, backup: Provider, engineering: Group, django_user_model: Any, fake: FakeOpenAI) -> None:
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


