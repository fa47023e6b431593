"""Rotating the key that encrypts provider credentials at rest."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command

from gateway import crypto
from gateway.models import Provider

pytestmark = pytest.mark.django_db

OLD, NEW = Fernet.generate_key().decode(), Fernet.generate_key().decode()


@pytest.fixture
def keys(settings: Any) -> Iterator[Any]:
    settings.CREDENTIALS_KEYS = [OLD]
    crypto.reset_cache()
    yield settings
    crypto.reset_cache()


def use(settings: Any, *keys: str) -> None:
    settings.CREDENTIALS_KEYS = list(keys)
    crypto.reset_cache()


def test_rotation_re_encrypts_under_the_new_key_so_the_old_one_can_go(keys: Any) -> None:
    provider = Provider(name="openai", kind="openai", base_url="https://api.openai.com")
    provider.set_api_key("sk-provider-secret-0001")
    provider.save()
    Provider.objects.create(name="local", kind="openai_compatible", base_url="https://llm.example.com")
    use(keys, NEW, OLD)  # the new key first, the old one still there
    out = io.StringIO()
    call_command("credentials_rotate", stdout=out)
    assert "re-encrypted 1 provider credential" in out.getvalue()
    use(keys, NEW)  # the old key dropped
    provider.refresh_from_db()
    assert provider.credential() == "sk-provider-secret-0001"
    assert "sk-provider-secret" not in provider.api_key_encrypted


def test_a_credential_no_configured_key_opens_stops_the_rotation_and_changes_nothing(keys: Any) -> None:
    provider = Provider(name="openai", kind="openai", base_url="https://api.openai.com")
    provider.set_api_key("sk-provider-secret-0002")
    provider.save()
    stored = provider.api_key_encrypted
    use(keys, NEW)  # the old key dropped before rotating: a mistake
    with pytest.raises(CommandError, match="openai"):
        call_command("credentials_rotate", stdout=io.StringIO())
    provider.refresh_from_db()
    assert provider.api_key_encrypted == stored
