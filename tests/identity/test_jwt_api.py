"""Entra ID access tokens (Bearer JWT) on the API, for service-to-service calls."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import openai
import pytest
from asgiref.sync import sync_to_async
from cryptography.hazmat.primitives.asymmetric import rsa
from django.contrib.auth.models import Group, User
from social_django.models import UserSocialAuth

from config.asgi import application
from gateway.state import shutdown
from portal.identity import BACKEND_NAME, account_uid
from portal.models import App
from quotas.models import QuotaRule, UsageEvent
from tests.fakes.azure_ad import FakeAzureAD, Identity
from tests.support.identity import person
from tests.support.queries import count_queries

pytestmark = pytest.mark.django_db(transaction=True)

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def gw(catalog: Any, fast_flush: None, idp: FakeAzureAD) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=application), base_url="http://gw"
    ) as client:
        yield client
    await shutdown()


@pytest.fixture
def erin(idp: FakeAzureAD, engineering: Group) -> tuple[User, Identity]:
    """A user who signed in to the portal once (so the account exists), in engineering."""
    identity = person("erin@contoso.test")
    user = User.objects.create_user("erin@contoso.test", "erin@contoso.test")
    user.groups.add(engineering)
    UserSocialAuth.objects.create(
        user=user, provider=BACKEND_NAME, uid=account_uid(idp.tenant_id, identity.oid)
    )
    return user, identity


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def events() -> list[UsageEvent]:
    await shutdown()  # flushes the usage buffer
    return await sync_to_async(lambda: list(UsageEvent.objects.order_by("created_at")))()


async def test_a_users_token_calls_as_that_user(gw: httpx.AsyncClient, idp: FakeAzureAD, erin: Any,
                                                engineering: Group) -> None:  # fmt: skip
    user, identity = erin
    response = await gw.post("/v1/chat/completions", json=BODY, headers=bearer(idp.access_token(identity)))
    assert response.status_code == 200, response.text
    # gpt-4.1 is open to engineering only: the token's user brings their departments.
    restricted = await gw.post("/v1/chat/completions", json={**BODY, "model": "gpt-4.1"},
                               headers=bearer(idp.access_token(identity)))  # fmt: skip
    assert restricted.status_code == 200
    [first, second] = await events()
    assert first.user_id == user.pk and first.key_id is None and first.group_ids == [engineering.pk]
    assert first.prompt_tokens > 0 and second.model == "gpt-4.1"


async def test_an_app_only_token_calls_as_the_registered_app(gw: httpx.AsyncClient, idp: FakeAzureAD,
                                                             engineering: Group) -> None:  # fmt: skip
    client = idp.add_client(app_roles=["Api.Call"])
    app = await sync_to_async(App.objects.create)(name="Bot", slug="bot", owner_group=engineering,
                                                  entra_app_id=client.client_id)  # fmt: skip
    response = await gw.post("/v1/chat/completions", json=BODY, headers=bearer(idp.app_token(client)))
    assert response.status_code == 200, response.text
    stranger = idp.add_client()
    refused = await gw.post("/v1/chat/completions", json=BODY, headers=bearer(idp.app_token(stranger)))
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unknown_principal"
    [event] = await events()
    assert event.app_id == app.pk and event.user_id is None and event.group_ids == [engineering.pk]


async def test_a_delegated_token_from_a_registered_client_is_accounted_to_that_app(
    gw: httpx.AsyncClient, idp: FakeAzureAD, erin: Any, engineering: Group
) -> None:
    client = idp.add_client()
    app = await sync_to_async(App.objects.create)(name="Notes", slug="notes", owner_group=engineering,
                                                  entra_app_id=client.client_id)  # fmt: skip
    token = idp.access_token(erin[1], client_id=client.client_id)
    assert (await gw.post("/v1/chat/completions", json=BODY, headers=bearer(token))).status_code == 200
    [event] = await events()
    assert event.user_id == erin[0].pk and event.app_id == app.pk


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"exp": int(time.time()) - 120}, "token_expired"),
        ({"aud": "api://some-other-api"}, "invalid_token"),
        ({"iss": "https://login.microsoftonline.com/another-tenant/v2.0"}, "invalid_token"),
        ({"tid": str(uuid.uuid4())}, "invalid_token"),
    ],
    ids=["expired", "audience", "issuer", "tenant"],
)
async def test_bad_tokens_are_refused(gw: httpx.AsyncClient, idp: FakeAzureAD, erin: Any, change: dict[str, Any],
                                      code: str) -> None:  # fmt: skip
    response = await gw.post(
        "/v1/chat/completions", json=BODY, headers=bearer(idp.access_token(erin[1], **change))
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == code


async def test_forged_signatures_are_refused(gw: httpx.AsyncClient, idp: FakeAzureAD, erin: Any) -> None:
    good = idp.access_token(erin[1])
    claims = jwt.decode(good, options={"verify_signature": False})
    kid = jwt.get_unverified_header(good)["kid"]
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = [
        jwt.encode(claims, other_key, algorithm="RS256", headers={"kid": kid}),  # another key, a known kid
        jwt.encode(claims, "s" * 32, algorithm="HS256", headers={"kid": kid}),  # alg confusion
        good[:-8] + ("A" * 8 if not good.endswith("A" * 8) else "B" * 8),  # a tampered signature
    ]
    for token in forged:
        response = await gw.post("/v1/chat/completions", json=BODY, headers=bearer(token))
        assert response.status_code == 401, token
        assert response.json()["error"]["code"] == "invalid_token"


async def test_a_v1_token_of_the_tenant_is_accepted(
    gw: httpx.AsyncClient, idp: FakeAzureAD, erin: Any
) -> None:
    token = idp.access_token(erin[1], iss=f"https://sts.windows.net/{idp.tenant_id}/", ver="1.0",
                             aud=f"api://{idp.client_id}")  # fmt: skip
    assert (await gw.post("/v1/chat/completions", json=BODY, headers=bearer(token))).status_code == 200


async def test_a_new_signing_key_is_fetched_on_an_unknown_key_id(gw: httpx.AsyncClient, idp: FakeAzureAD, erin: Any,
                                                                  settings: Any) -> None:  # fmt: skip
    settings.AZURE_AD_JWKS_MIN_REFRESH = 0
    fetches = lambda: sum(1 for _, p in idp.requests if p.endswith("/discovery/v2.0/keys"))  # noqa: E731
    assert (
        await gw.post("/v1/chat/completions", json=BODY, headers=bearer(idp.access_token(erin[1])))
    ).status_code == 200
    assert fetches() == 1
    assert (
        await gw.post("/v1/chat/completions", json=BODY, headers=bearer(idp.access_token(erin[1])))
    ).status_code == 200
    assert fetches() == 1  # cached
    idp.rotate_key(drop_old=True)
    assert (
        await gw.post("/v1/chat/completions", json=BODY, headers=bearer(idp.access_token(erin[1])))
    ).status_code == 200
    assert fetches() == 2
    # An unknown key id refetches at most every AZURE_AD_JWKS_MIN_REFRESH seconds.
    settings.AZURE_AD_JWKS_MIN_REFRESH = 60
    for _ in range(3):
        claims = jwt.decode(idp.access_token(erin[1]), options={"verify_signature": False})
        token = idp.sign(claims).split(".")
        header = jwt.utils.base64url_encode(b'{"alg":"RS256","kid":"nobody","typ":"JWT"}').decode()
        response = await gw.post(
            "/v1/chat/completions", json=BODY, headers=bearer(".".join([header, *token[1:]]))
        )
        assert response.status_code == 401
    assert fetches() == 2


async def test_a_warm_token_makes_no_sql_query(gw: httpx.AsyncClient, idp: FakeAzureAD, erin: Any) -> None:
    headers = bearer(idp.access_token(erin[1]))
    assert (await gw.post("/v1/chat/completions", json=BODY, headers=headers)).status_code == 200
    with count_queries() as warm:
        assert (await gw.post("/v1/chat/completions", json=BODY, headers=headers)).status_code == 200
        assert (await gw.get("/v1/models", headers=headers)).status_code == 200
    assert warm == []


async def test_unknown_and_disabled_users_are_refused(
    gw: httpx.AsyncClient, idp: FakeAzureAD, erin: Any
) -> None:
    stranger = person("nobody@contoso.test")
    response = await gw.post("/v1/chat/completions", json=BODY, headers=bearer(idp.access_token(stranger)))
    assert response.status_code == 401 and response.json()["error"]["code"] == "unknown_principal"
    headers = bearer(idp.access_token(erin[1]))
    assert (await gw.post("/v1/chat/completions", json=BODY, headers=headers)).status_code == 200

    def disable() -> None:
        erin[0].is_active = False
        erin[0].save()

    await sync_to_async(disable)()
    deadline = time.monotonic() + 3
    status = 200
    while status == 200 and time.monotonic() < deadline:
        status = (await gw.post("/v1/chat/completions", json=BODY, headers=headers)).status_code
    assert status == 401  # the change signal dropped the cached principal


async def test_quotas_apply_to_token_callers(gw: httpx.AsyncClient, idp: FakeAzureAD, erin: Any) -> None:
    await sync_to_async(QuotaRule.objects.create)(subject_type="user", user=erin[0], metric="requests", window="day",
                                                  limit=1)  # fmt: skip
    await asyncio.sleep(0.3)  # the change signal reaches the gateway
    headers = bearer(idp.access_token(erin[1]))
    assert (await gw.post("/v1/chat/completions", json=BODY, headers=headers)).status_code == 200
    refused = await gw.post("/v1/chat/completions", json=BODY, headers=headers)
    assert refused.status_code == 429


def test_the_openai_sdk_calls_with_an_entra_token(
    gateway: Any, idp: FakeAzureAD, erin: Any, ledger: Any
) -> None:
    """What a service does: get a token from Entra ID (client credentials here) and use it as the key."""
    client = idp.add_client()
    App.objects.create(name="Batch job", slug="batch", owner_group=Group.objects.get(name="engineering"),
                       entra_app_id=client.client_id)  # fmt: skip
    token = httpx.post(f"{idp.url}/{idp.tenant_id}/oauth2/v2.0/token", data={
        "grant_type": "client_credentials", "client_id": client.client_id, "client_secret": client.secret,
        "scope": f"api://{idp.client_id}/.default"}).json()["access_token"]  # fmt: skip
    sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=token, max_retries=0)
    reply = sdk.chat.completions.create(**BODY)  # type: ignore[call-overload]
    assert reply.choices[0].message.content == "Echo: hi"
    [event] = ledger(1)
    assert event.app.slug == "batch" and event.key is None
