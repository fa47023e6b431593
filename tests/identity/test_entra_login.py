"""Sign-in through Entra ID: the whole authorization-code flow against the fake tenant."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from social_django.models import UserSocialAuth

from portal.identity import account_uid
from portal.models import AuditEvent, GroupMapping
from tests.fakes.azure_ad import FakeAzureAD, Identity
from tests.support.identity import person, sign_in

pytestmark = pytest.mark.django_db


def test_a_new_user_signs_in_and_lands_in_the_portal_with_their_departments(idp: FakeAzureAD) -> None:
    sales = Group.objects.create(name="sales")
    GroupMapping.objects.create(source="group", value="1b2c3d4e-0000-4000-8000-00000000aaaa", group=sales)
    alice = person("alice@contoso.test", groups=["1B2C3D4E-0000-4000-8000-00000000AAAA", "unmapped-group"])
    client = Client()
    response = sign_in(client, idp, alice)
    assert response.status_code == 302 and response["Location"] == "/"
    user = User.objects.get(social_auth__uid=account_uid(idp.tenant_id, alice.oid))
    assert user.username == "alice@contoso.test" and user.email == "alice@contoso.test"
    assert [g.name for g in user.groups.all()] == ["sales"]
    home = client.get("/")
    assert home.status_code == 200 and "sales" in home.content.decode()
    # No token of the flow is kept in the database.
    social = UserSocialAuth.objects.get(user=user)
    assert set(social.extra_data) <= {"tid", "oid", "auth_time"}
    assert AuditEvent.objects.filter(action="auth.login", object_id=str(user.pk)).count() == 1


def test_the_flow_sends_pkce_state_and_the_configured_client(idp: FakeAzureAD) -> None:
    client = Client()
    start = client.post("/auth/login/entra-id/")
    assert start["Location"].startswith(f"{idp.url}/{idp.tenant_id}/oauth2/v2.0/authorize?")
    query = dict(httpx.URL(start["Location"]).params)
    assert query["client_id"] == idp.client_id and query["response_type"] == "code"
    assert query["code_challenge_method"] == "S256" and query["state"]
    assert query["redirect_uri"] == "http://testserver/auth/complete/entra-id/"


def test_a_changed_email_and_username_keep_the_same_account(idp: FakeAzureAD) -> None:
    bob = person("bob@contoso.test")
    sign_in(Client(), idp, bob)
    first = User.objects.get(social_auth__uid=account_uid(idp.tenant_id, bob.oid))
    renamed = Identity(oid=bob.oid, preferred_username="robert@fabrikam.test", name="Robert",
                       email="robert@fabrikam.test")  # fmt: skip
    response = sign_in(Client(), idp, renamed)
    assert response.status_code == 302 and response["Location"] == "/"
    again = User.objects.get(social_auth__uid=account_uid(idp.tenant_id, bob.oid))
    assert again.pk == first.pk and User.objects.count() == 1
    assert again.email == "robert@fabrikam.test"
    assert again.username == "bob@contoso.test"  # the username is never rewritten


def test_accounts_are_never_matched_by_email_or_username(idp: FakeAzureAD) -> None:
    # A local account whose username and e-mail equal the newcomer's is not taken over.
    local = User.objects.create_user("carol@contoso.test", "carol@contoso.test", "pw", is_staff=True)
    newcomer = person("carol@contoso.test")
    client = Client()
    sign_in(client, idp, newcomer)
    user = User.objects.get(social_auth__uid=account_uid(idp.tenant_id, newcomer.oid))
    assert user.pk != local.pk and not user.is_staff
    assert client.get("/").context["user"].pk == user.pk
    # Nor is another Entra ID user with the same e-mail (another object id).
    twin = person("carol@contoso.test")
    sign_in(Client(), idp, twin)
    assert User.objects.get(social_auth__uid=account_uid(idp.tenant_id, twin.oid)).pk not in (
        local.pk,
        user.pk,
    )


def test_a_token_of_another_tenant_is_refused(idp: FakeAzureAD) -> None:
    stranger = person("mallory@evil.test", tid=str(uuid.uuid4()))
    client = Client()
    response = sign_in(client, idp, stranger)
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert not User.objects.exists()
    assert not client.get("/").wsgi_request.user.is_authenticated
    page = client.get(response["Location"]).content.decode()
    assert "Sign-in refused" in page
    assert AuditEvent.objects.filter(action="auth.refused").count() == 1


def test_a_tampered_state_is_refused(idp: FakeAzureAD) -> None:
    idp.next_identity = person("dave@contoso.test")
    client = Client()
    start = client.post("/auth/login/entra-id/")
    back = httpx.get(start["Location"], follow_redirects=False).headers["location"]
    forged = back.replace("state=", "state=x")
    response = client.get(forged.replace("http://testserver", ""))
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert not User.objects.exists()


def test_a_disabled_user_cannot_sign_in_and_their_session_ends(idp: FakeAzureAD) -> None:
    erin = person("erin@contoso.test")
    client = Client()
    sign_in(client, idp, erin)
    user = User.objects.get()
    assert client.get("/").status_code == 200
    user.is_active = False
    user.save()
    assert client.get("/").status_code == 302  # the session no longer authenticates
    response = sign_in(Client(), idp, erin)
    assert response["Location"].startswith("/accounts/login/")


def test_a_signed_in_user_cannot_attach_another_microsoft_account(idp: FakeAzureAD, alice: User) -> None:
    client = Client()
    client.force_login(alice)
    response = sign_in(client, idp, person("frank@contoso.test"))
    assert response["Location"].startswith("/accounts/login/")
    assert not UserSocialAuth.objects.exists()


def test_the_login_page_offers_microsoft_and_the_password_form(idp: FakeAzureAD, settings: Any) -> None:
    page = Client().get("/accounts/login/").content.decode()
    assert 'action="/auth/login/entra-id/"' in page and 'name="password"' in page
    settings.LOCAL_LOGIN = "off"
    page = Client().get("/accounts/login/").content.decode()
    assert "Sign in with Microsoft" in page and 'name="password"' not in page
    admin_page = Client().get("/admin/login/").content.decode()
    assert "Sign in with Microsoft" in admin_page
