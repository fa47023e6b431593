"""Password guessing is throttled on both login pages: N failures per username and address → 429."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

pytestmark = pytest.mark.django_db


@pytest.fixture
def carol(django_user_model: type[User]) -> User:
    # A fresh name per test: the failure counter lives in the (shared) cache, keyed by username.
    return django_user_model.objects.create_user(f"carol-{uuid.uuid4().hex[:8]}", password="right-password")


def _post(path: str, user: User, password: str, address: str = "10.0.0.1") -> Any:
    return Client(REMOTE_ADDR=address).post(path, {"username": user.username, "password": password})


def test_five_failures_lock_the_username_and_address_out_with_a_429(carol: User) -> None:
    for _ in range(5):
        assert _post("/accounts/login/", carol, "wrong").status_code == 200  # the form, with its error
    locked = _post("/accounts/login/", carol, "right-password")  # even the right password now
    assert locked.status_code == 429
    assert b"Too many sign-in attempts" in locked.content
    assert locked["Retry-After"] == "900"
    # The admin's login page shares the counter.
    assert _post("/admin/login/", carol, "right-password").status_code == 429
    # Another address is not locked out (the lock is per username and address).
    assert _post("/accounts/login/", carol, "right-password", address="10.0.0.2").status_code == 302


def test_admin_login_failures_count_too(carol: User) -> None:
    for _ in range(5):
        assert _post("/admin/login/", carol, "wrong").status_code == 200
    assert _post("/accounts/login/", carol, "right-password").status_code == 429


def test_a_successful_sign_in_resets_the_count(carol: User) -> None:
    for _ in range(4):
        _post("/accounts/login/", carol, "wrong")
    assert _post("/accounts/login/", carol, "right-password").status_code == 302
    for _ in range(4):
        _post("/accounts/login/", carol, "wrong")
    assert _post("/accounts/login/", carol, "right-password").status_code == 302


def test_the_lock_ends_with_its_window(carol: User, settings: Any) -> None:
    settings.LOGIN_THROTTLE_FAILURES = 2
    settings.LOGIN_THROTTLE_WINDOW_SECONDS = 5  # long enough for two password hashes on a busy machine
    _post("/accounts/login/", carol, "wrong")
    first = time.monotonic()  # the window was opened by that first failure, just before it returned
    _post("/accounts/login/", carol, "wrong")
    assert _post("/accounts/login/", carol, "right-password").status_code == 429
    time.sleep(max(0.0, first + 5.3 - time.monotonic()))
    assert _post("/accounts/login/", carol, "right-password").status_code == 302


def test_the_admin_is_for_staff_only(carol: User, django_user_model: type[User]) -> None:
    client = Client()
    client.force_login(carol)
    for path in ("/admin/", "/admin/gateway/provider/", "/admin/auth/user/"):
        response = client.get(path)
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), path
    staff = django_user_model.objects.create_user(
        f"staff-{uuid.uuid4().hex[:8]}", password="x", is_staff=True
    )
    client.force_login(staff)
    assert client.get("/admin/").status_code == 200
