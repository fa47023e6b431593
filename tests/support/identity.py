"""Helpers of the identity tests: the fake Entra ID tenant wired into the settings, and sign-in."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from django.test import Client

from tests.fakes.azure_ad import FakeAzureAD, Identity


@pytest.fixture(scope="session")
def fake_idp() -> Iterator[FakeAzureAD]:
    with FakeAzureAD() as idp:
        yield idp


@pytest.fixture
def idp(fake_idp: FakeAzureAD, settings: Any) -> Iterator[FakeAzureAD]:
    """The fake tenant, reset, with the settings pointing at it."""
    fake_idp.reset()
    settings.AZURE_AD_TENANT_ID = fake_idp.tenant_id
    settings.AZURE_AD_CLIENT_ID = fake_idp.client_id
    settings.AZURE_AD_CLIENT_SECRET = fake_idp.client_secret
    settings.AZURE_AD_AUTHORITY = fake_idp.url
    settings.AZURE_AD_API_AUDIENCES = [fake_idp.client_id, f"api://{fake_idp.client_id}"]
    yield fake_idp
    fake_idp.reset()


def person(upn: str, **extra: Any) -> Identity:
    """A user of the fake tenant with a fresh object id."""
    name = upn.split("@")[0].title()
    return Identity(
        oid=str(uuid.uuid4()), preferred_username=upn, name=name, email=extra.pop("email", upn), **extra
    )


def sign_in(client: Client, idp: FakeAzureAD, identity: Identity, next_url: str = "/") -> Any:
    """Run the authorization-code flow: our start view → the fake's authorize → our callback.

    Returns the callback's response (a redirect into the portal, or back to the login page).
    """
    idp.next_identity = identity
    start = client.post("/auth/login/entra-id/", {"next": next_url})
    assert start.status_code == 302, start
    authorize = httpx.get(start["Location"], follow_redirects=False, timeout=10)
    assert authorize.status_code == 302, authorize.text
    back = urlsplit(authorize.headers["location"])
    return client.get(f"{back.path}?{back.query}")
