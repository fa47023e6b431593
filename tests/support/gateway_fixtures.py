"""Fixtures of the gateway tests: a fake upstream, a catalogue pointing at it, keys, a live gateway."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import openai
import pytest
from django.contrib.auth.models import Group, User

from gateway.models import CatalogModel, Deployment, Provider
from gateway.services import key_issue
from quotas.models import UsageEvent
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.live import LiveServer


@pytest.fixture(autouse=True)
def _fresh_breakers() -> Iterator[None]:
    """Circuit breakers are per process: no test inherits another's open circuits."""
    from gateway import routing

    routing.BREAKERS.clear()
    yield
    routing.BREAKERS.clear()


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake(fake_upstream: FakeOpenAI) -> Iterator[FakeOpenAI]:
    fake_upstream.reset()
    yield fake_upstream
    fake_upstream.reset()


@pytest.fixture
def fast_flush(settings: Any) -> None:
    settings.USAGE_FLUSH_INTERVAL = 0.05
    settings.GATEWAY_CONFIG_POLL_SECONDS = 0.1


@pytest.fixture
def engineering(transactional_db: None) -> Group:
    return Group.objects.create(name="engineering")


@pytest.fixture
def catalog(transactional_db: None, fake: FakeOpenAI, engineering: Group) -> dict[str, Any]:
    """Provider `local` (OpenAI-style) and `azure-eu` (Azure-style) on the fake, with priced models."""
    local = Provider(name="local", kind="openai_compatible", base_url=fake.base_url)
    local.set_api_key(fake.api_key)
    local.save()
    azure = Provider(
        name="azure-eu", kind="azure_openai", base_url=fake.url, api_version="2024-10-21", region="westeurope"
    )
    azure.set_api_key(fake.api_key)
    azure.save()
    price = {
        "input_per_mtok": Decimal("0.15"),
        "output_per_mtok": Decimal("0.60"),
        "cached_input_per_mtok": Decimal("0.075"),
    }
    mini = CatalogModel.objects.create(name="gpt-4o-mini", **price)
    Deployment.objects.create(model=mini, provider=local, provider_model="gpt-4o-mini")
    azure_model = CatalogModel.objects.create(
        name="gpt-4o", input_per_mtok=Decimal("2.5"), output_per_mtok=Decimal("10")
    )
    Deployment.objects.create(model=azure_model, provider=azure, provider_model="gpt-4o")
    emb = CatalogModel.objects.create(
        name="text-embedding-3-small", kind="embedding", input_per_mtok=Decimal("0.02")
    )
    Deployment.objects.create(model=emb, provider=local, provider_model="text-embedding-3-small")
    mod = CatalogModel.objects.create(name="omni-moderation-latest", kind="moderation")
    Deployment.objects.create(model=mod, provider=local, provider_model="omni-moderation-latest")
    img = CatalogModel.objects.create(name="dall-e-3", kind="image", per_image=Decimal("0.04"))
    Deployment.objects.create(model=img, provider=local, provider_model="dall-e-3")
    instruct = CatalogModel.objects.create(
        name="gpt-3.5-turbo-instruct", input_per_mtok=Decimal("1.5"), output_per_mtok=Decimal("2")
    )
    Deployment.objects.create(model=instruct, provider=local, provider_model="gpt-3.5-turbo-instruct")
    restricted = CatalogModel.objects.create(
        name="gpt-4.1", input_per_mtok=Decimal("2"), output_per_mtok=Decimal("8")
    )
    restricted.allowed_groups.add(engineering)
    Deployment.objects.create(model=restricted, provider=local, provider_model="gpt-4.1")
    return {"local": local, "azure": azure, "mini": mini}


@pytest.fixture
def alice_key(catalog: dict[str, Any], django_user_model: type[User]) -> tuple[User, str]:
    user = django_user_model.objects.create_user("alice", "alice@example.com", "pw")
    _, plaintext = key_issue(name="alice's key", user=user)
    return user, plaintext


@pytest.fixture
def gateway(catalog: dict[str, Any], fast_flush: None) -> Iterator[LiveServer]:
    with LiveServer() as server:
        yield server


@pytest.fixture
def sdk(gateway: LiveServer, alice_key: tuple[User, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=alice_key[1], max_retries=0)


@pytest.fixture
def asdk(gateway: LiveServer, alice_key: tuple[User, str]) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=alice_key[1], max_retries=0)


def wait_for_events(count: int, timeout: float = 10.0, **filters: Any) -> list[UsageEvent]:
    """The ledger rows once there are ``count`` of them (the buffer flushes asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = list(UsageEvent.objects.filter(**filters).order_by("created_at"))
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


@pytest.fixture
def ledger() -> Callable[..., list[UsageEvent]]:
    return wait_for_events
