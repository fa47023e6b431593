"""Entra ID access tokens on the API: service-to-service calls without an issued key.

A ``Bearer`` token shaped like a JWT is checked against the tenant's signing keys (JWKS, fetched
with the process's async HTTP client, cached ``AZURE_AD_JWKS_TTL`` seconds and fetched again at
once for an unknown key id, at most every ``AZURE_AD_JWKS_MIN_REFRESH`` seconds), for algorithm
RS256, audience (``AZURE_AD_API_AUDIENCES``), issuer (the tenant's v2.0 or v1.0 issuer), expiry and
tenant id. The caller is the token's subject:

- a **delegated** token (it has ``scp``) names a user by ``tid`` + ``oid``, who must have signed
  in to the portal once (that is how their account exists); when the calling client (``azp`` or
  ``appid``) is a registered catalogue app, usage is accounted to that app too;
- an **app-only** token (``idtyp: app``, or no ``scp``) names a client application, which must be
  a catalogue app with that ``entra_app_id``; it calls as the app, owned by the app's group.

The principal resolved for a token is cached (by the token's SHA-256) until the token expires or
the gateway's change signal fires, so a warm token costs one dict lookup: no SQL, no signature check.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import re
import time
from typing import Any

import httpx
import jwt
from django.conf import settings

from config.db import adb
from gateway import catalog
from gateway.catalog import Principal
from gateway.errors import GatewayError

logger = logging.getLogger(__name__)

JWT_SHAPE = re.compile(r"^eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
ALGORITHMS = ["RS256"]
LEEWAY_SECONDS = 30  # clock skew between Entra ID and us
NEGATIVE_TTL = 5.0
MAX_CACHED = 10_000
V1_ISSUER = "https://sts.windows.net/{tenant}/"


def looks_like_jwt(token: str) -> bool:
    """A compact JWS (three base64url parts, a JSON header): never one of our issued keys."""
    return bool(JWT_SHAPE.match(token))


def _invalid(message: str, code: str = "invalid_token") -> GatewayError:
    return GatewayError(401, message, code=code)


def expected_issuers(tenant: str) -> list[str]:
    """The v2.0 issuer of our authority and the v1.0 one (access tokens follow the API's manifest)."""
    return [f"{settings.AZURE_AD_AUTHORITY.rstrip('/')}/{tenant}/v2.0", V1_ISSUER.format(tenant=tenant)]


def is_app_only(claims: dict[str, Any]) -> bool:
    """An application calling as itself (client credentials), not on behalf of a user."""
    return claims.get("idtyp") == "app" or "scp" not in claims


class EntraTokens:
    """One process's JWKS cache and token → principal cache."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.keys: dict[str, Any] = {}
        self.keys_loaded_at = -1e18
        self.last_fetch = -1e18
        self.lock = asyncio.Lock()
        self.principals: dict[str, tuple[Principal | None, float]] = {}

    def forget(self) -> None:
        """Drop every cached principal (the change signal fired: a user, group or app changed)."""
        self.principals.clear()

    async def principal(self, token: str) -> Principal:
        """The caller named by ``token``, or a 401."""
        tenant = settings.AZURE_AD_TENANT_ID
        if not tenant or not settings.AZURE_AD_API_AUDIENCES:
            raise _invalid("Entra ID tokens are not accepted by this gateway; use an issued API key.")
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = time.time()
        hit = self.principals.get(digest)
        if hit is not None and hit[1] > now:
            if hit[0] is None:
                raise _unknown()
            return hit[0]
        claims = await self.validate(token, tenant)
        principal = await adb(resolve_principal, claims)
        until = min(float(claims["exp"]), now + (settings.GATEWAY_CACHE_TTL if principal else NEGATIVE_TTL))
        if len(self.principals) >= MAX_CACHED:
            self.principals = {k: v for k, v in self.principals.items() if v[1] > now}
            if len(self.principals) >= MAX_CACHED:
                self.principals.clear()
        self.principals[digest] = (principal, until)
        if principal is None:
            raise _unknown()
        return principal

    async def validate(self, token: str, tenant: str) -> dict[str, Any]:
        """The verified claims of ``token``, or a 401 saying what is wrong with it."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _invalid("Malformed Entra ID token.") from None
        kid = header.get("kid")
        if header.get("alg") not in ALGORITHMS or not isinstance(kid, str) or not kid:
            raise _invalid("The Entra ID token must be signed with RS256 and name its key (kid).")
        key = await self.signing_key(kid)
        if key is None:
            raise _invalid("The Entra ID token is signed by a key the tenant does not publish.")
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key=key, algorithms=ALGORITHMS, audience=settings.AZURE_AD_API_AUDIENCES,
                issuer=expected_issuers(tenant), leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", "tid", "oid"]},
            )  # fmt: skip
        except jwt.ExpiredSignatureError:
            raise _invalid("The Entra ID token has expired.", code="token_expired") from None
        except jwt.InvalidAudienceError:
            raise _invalid("The Entra ID token was not issued for this API (audience).") from None
        except jwt.InvalidIssuerError:
            raise _invalid("The Entra ID token was not issued by this organisation's tenant.") from None
        except jwt.PyJWTError as exc:
            raise _invalid(f"Invalid Entra ID token: {type(exc).__name__}.") from None
        if str(claims["tid"]).lower() != tenant.lower():
            raise _invalid("The Entra ID token belongs to another tenant.")
        return claims

    async def signing_key(self, kid: str) -> Any:
        """The public key ``kid`` of the tenant, fetching the key set when stale or ``kid`` is new."""
        if kid in self.keys and self._fresh():
            return self.keys[kid]
        async with self.lock:
            if not (kid in self.keys and self._fresh()):
                if time.monotonic() - self.last_fetch >= settings.AZURE_AD_JWKS_MIN_REFRESH:
                    await self._fetch()
                elif not self.keys:
                    raise GatewayError(503, "The identity provider's signing keys are unavailable.",
                                       code="identity_provider_unavailable")  # fmt: skip
        return self.keys.get(kid)

    def _fresh(self) -> bool:
        return time.monotonic() - self.keys_loaded_at < settings.AZURE_AD_JWKS_TTL

    async def _fetch(self) -> None:
        from portal.identity import authority_base

        self.last_fetch = time.monotonic()
        url = f"{authority_base()}/discovery/v2.0/keys"
        try:
            response = await self.http.get(url, timeout=httpx.Timeout(5.0))
            response.raise_for_status()
            data = response.json()
            usable = [
                k for k in data.get("keys", []) if k.get("kty") == "RSA" and k.get("use", "sig") == "sig"
            ]
            keyset = jwt.PyJWKSet.from_dict({"keys": usable})
        except Exception as exc:
            logger.warning("could not fetch the Entra ID signing keys from %s: %s", url, type(exc).__name__)
            if not self.keys:
                raise GatewayError(503, "The identity provider's signing keys are unavailable.",
                                   code="identity_provider_unavailable") from None  # fmt: skip
            return  # keep verifying with the keys we have
        self.keys = {k.key_id: k.key for k in keyset.keys if k.key_id}
        self.keys_loaded_at = time.monotonic()


def _unknown() -> GatewayError:
    return _invalid(
        "The user or application this Entra ID token names is not known here: the user must sign in to "
        "the portal once, an application must be registered as an app with its client id.",
        code="unknown_principal",
    )


def resolve_principal(claims: dict[str, Any]) -> Principal | None:
    """The principal a verified token names (sync ORM), or None when we do not know it."""
    from social_django.models import UserSocialAuth

    from portal.identity import BACKEND_NAME, account_uid
    from portal.models import App

    client = str(claims.get("azp") or claims.get("appid") or "")
    app = App.objects.filter(entra_app_id__iexact=client).first() if client else None
    if is_app_only(claims):
        return app_principal(app) if app is not None else None
    uid = account_uid(str(claims["tid"]), str(claims["oid"]))
    user_id = (
        UserSocialAuth.objects.filter(provider=BACKEND_NAME, uid=uid)
        .values_list("user_id", flat=True)
        .first()
    )
    principal = catalog.principal_for_user(user_id) if user_id is not None else None
    if principal is None:
        return None
    return dataclasses.replace(principal, app_id=app.id if app is not None else None)


def app_principal(app: Any) -> Principal:
    """An app calling as itself, like its service keys: owned by its group, under that group's policy."""
    group_ids = frozenset({app.owner_group_id})
    # The data policy of the group, as the gateway computes it for keys (absent in older catalogues).
    policy = getattr(catalog, "_policy", None)
    extra = policy(group_ids) if policy is not None else {}
    return Principal(user_id=None, username=f"app:{app.slug}", group_ids=group_ids, app_id=app.id, **extra)
