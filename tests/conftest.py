"""Shared fixtures: a few named users, and the backends the run was pointed at."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings

pytest_plugins = ["tests.support.gateway_fixtures", "tests.support.browser"]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """Tests marked `redis` need REDIS_URL: the embedded pass deselects them with -m, never skips."""
    if not settings.REDIS_URL:
        for item in items:
            if item.get_closest_marker("redis"):
                raise pytest.UsageError(
                    f"{item.nodeid} needs Redis but REDIS_URL is unset: run with -m 'not redis'"
                )


@pytest.fixture(scope="session", autouse=True)
def _clean_redis() -> None:
    """Each run starts on an empty Redis database (the test settings point at a dedicated one)."""
    if settings.REDIS_URL:
        import redis

        redis.Redis.from_url(settings.REDIS_URL).flushdb()


@pytest.fixture(scope="session", autouse=True)
def _loopback_upstreams() -> Iterator[None]:
    """The fake upstreams listen on 127.0.0.1: allow loopback provider URLs (the SSRF guard refuses
    them by default), here and in the server processes that tests start."""
    from django.test import override_settings

    allowed = "127.0.0.0/8,::1/128"
    previous = os.environ.get("GATEWAY_UPSTREAM_ALLOWED_NETWORKS")
    os.environ["GATEWAY_UPSTREAM_ALLOWED_NETWORKS"] = allowed
    with override_settings(GATEWAY_UPSTREAM_ALLOWED_NETWORKS=allowed.split(",")):
        yield
    if previous is None:
        del os.environ["GATEWAY_UPSTREAM_ALLOWED_NETWORKS"]
    else:
        os.environ["GATEWAY_UPSTREAM_ALLOWED_NETWORKS"] = previous


@pytest.fixture
def alice(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("alice", "alice@example.com", "alice-password")


@pytest.fixture
def bob(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("bob", "bob@example.com", "bob-password")
