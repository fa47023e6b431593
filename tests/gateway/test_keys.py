"""Issued keys: format, checksum, digest-only storage, `issue_key`."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from gateway import keys
from gateway.models import ApiKey

pytestmark = pytest.mark.django_db


def test_a_key_has_the_prefix_40_random_base62_and_a_checksum() -> None:
    plaintext = keys.generate()
    assert re.fullmatch(r"llmc-[0-9A-Za-z]{46}", plaintext)
    assert keys.well_formed(plaintext)
    assert keys.checksum(plaintext[5:45]) == plaintext[45:]
    assert plaintext != keys.generate()


def test_a_damaged_key_fails_the_checksum() -> None:
    plaintext = keys.generate()
    for i in range(5, len(plaintext)):
        damaged = plaintext[:i] + ("x" if plaintext[i] != "x" else "y") + plaintext[i + 1 :]
        assert not keys.well_formed(damaged)
    assert not keys.well_formed(plaintext + "a")
    assert not keys.well_formed("sk-" + plaintext[5:])


def test_issue_key_prints_the_plaintext_last_and_stores_only_a_digest() -> None:
    out = StringIO()
    call_command("issue_key", "--user", "alice", "--create-user", "--name", "ci", "--models", "gpt-4o,gpt-4o-mini",
                 "--expires-in-days", "30", stdout=out)  # fmt: skip
    plaintext = out.getvalue().strip().splitlines()[-1]
    assert keys.well_formed(plaintext)
    key = ApiKey.objects.get()
    assert key.digest == keys.digest(plaintext)
    assert key.user == User.objects.get(username="alice")
    assert key.allowed_models == ["gpt-4o", "gpt-4o-mini"]
    assert key.expires_at is not None
    assert plaintext not in repr(ApiKey.objects.values().get())
    assert key.hint.startswith(plaintext[:9]) and key.hint.endswith(plaintext[-4:])


def test_issue_key_refuses_an_unknown_user_without_create() -> None:
    with pytest.raises(CommandError, match="--create-user"):
        call_command("issue_key", "--user", "nobody")
