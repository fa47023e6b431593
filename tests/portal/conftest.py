"""Fixtures of the chat and playground tests: an HTTP client signed in to the live portal."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from django.conf import settings
from django.middleware.csrf import _get_new_csrf_string
from django.test import Client

from tests.support.live import LiveServer


def signed_in(server: LiveServer, user: Any) -> httpx.Client:
    """An httpx client of the live server with ``user``'s session and a CSRF token on every request."""
    client = Client()
    client.force_login(user)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    token = _get_new_csrf_string()
    return httpx.Client(
        base_url=server.url,
        cookies={settings.SESSION_COOKIE_NAME: session, settings.CSRF_COOKIE_NAME: token},
        headers={"X-CSRFToken": token},
        timeout=30,
    )


def events(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    """The server-sent events of a streamed response, as (event, data) as they arrive."""
    kind = "message"
    for line in response.iter_lines():
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            yield kind, orjson.loads(line[5:].strip())
            kind = "message"


@pytest.fixture
def portal(gateway: LiveServer) -> LiveServer:
    """The live server (the gateway fixture: catalogue on the fake upstream, fast usage flushes)."""
    return gateway


@pytest.fixture
def alice_http(portal: LiveServer, alice: Any) -> Iterator[httpx.Client]:
    with signed_in(portal, alice) as client:
        yield client


@pytest.fixture
def bob_http(portal: LiveServer, bob: Any) -> Iterator[httpx.Client]:
    with signed_in(portal, bob) as client:
        yield client
