from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command

pytestmark = pytest.mark.django_db


def test_seed_demo_is_idempotent() -> None:
    call_command("seed_demo")
    call_command("seed_demo")
    assert User.objects.filter(username="demo").count() == 1
    assert Group.objects.filter(name="demo").count() == 1
    assert User.objects.get(username="demo").groups.filter(name="demo").exists()
    assert User.objects.get(username="demo").check_password("demo-password")


def test_ensure_superuser_creates_one_only_when_none_exists(capsys: pytest.CaptureFixture[str]) -> None:
    call_command("ensure_superuser")
    first = capsys.readouterr().out
    assert "password" in first
    call_command("ensure_superuser")
    assert capsys.readouterr().out == ""
    assert User.objects.filter(is_superuser=True).count() == 1
