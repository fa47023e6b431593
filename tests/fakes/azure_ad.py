"""A fake Azure AD (Microsoft Entra ID) tenant: a real HTTP server on loopback.

The identity tests and the browser test point ``AZURE_AD_AUTHORITY`` at this server instead of
``https://login.microsoftonline.com``. It is a plain ASGI app (no Django) served by uvicorn in a
background thread (``tests/support/live.py``)::

    with FakeAzureAD() as idp:
        idp.add_user(Identity(oid=..., preferred_username="alice@contoso.test", groups=[...]))
        settings.AZURE_AD_AUTHORITY = idp.url      # + AZURE_AD_TENANT_ID / _CLIENT_ID / _SECRET
        token = idp.access_token(identity, audience=idp.client_id)   # a delegated API token

What it serves (paths and shapes as Microsoft documents them; ``{tenant}`` is the tenant id)
---------------------------------------------------------------------------------------------
* ``GET /{tenant}/v2.0/.well-known/openid-configuration``: the OpenID Connect discovery document
  (issuer ``{url}/{tenant}/v2.0``, authorization, token and JWKS endpoints).
* ``GET /{tenant}/oauth2/v2.0/authorize`` (authorization-code flow, ``response_type=code``, PKCE
  ``S256`` optional, ``state`` and ``nonce`` echoed): checks the client id (AADSTS700016) and the
  redirect URI (AADSTS50011). When ``next_identity`` is set it signs that identity in at once
  (a 302 back to ``redirect_uri?code=…&state=…&session_state=…``); otherwise it shows an account
  picker (an HTML page with one button per known user) that a browser clicks, like the real
  sign-in page.
* ``POST /{tenant}/oauth2/v2.0/token``: ``authorization_code`` (client secret in the body or HTTP
  Basic, single-use code valid 10 minutes, same redirect URI, PKCE verifier) → ``token_type``,
  ``scope``, ``expires_in``, ``ext_expires_in``, ``access_token``, ``id_token``; and
  ``client_credentials`` (``scope=api://<api>/.default``) → an app-only access token with the
  client's app roles and ``idtyp: app``. Errors are Entra's JSON (``error``, ``error_description``
  starting with the AADSTS code, ``error_codes``, ``timestamp``, ``trace_id``, ``correlation_id``).
* ``GET /{tenant}/discovery/v2.0/keys``: the JWKS (RSA ``kid``, ``x5t``, ``n``, ``e``, ``use: sig``,
  ``issuer`` with the ``{tenantid}`` placeholder, as Microsoft publishes it).

Tokens are RS256 JWTs signed with a test key (header ``typ``, ``alg``, ``kid``, ``x5t``). The id token
has ``ver``, ``iss``, ``sub`` (pairwise per client), ``aud`` (client id), ``exp``, ``iat``, ``nbf``,
``name``, ``preferred_username``, ``oid``, ``tid``, ``email``, ``groups``, ``roles``, ``nonce``,
``uti``; the access token also ``scp`` (delegated) or ``roles`` + ``idtyp`` (app-only), ``azp``,
``azpacr``. ``rotate_key()`` starts signing with a new key (the old one stays published unless
``drop_old``); ``requests`` records every request (so tests can count JWKS fetches).

References followed: Microsoft identity platform docs "OpenID Connect on the Microsoft identity
platform" (discovery document, authorize and token requests), "ID token claims reference",
"Access token claims reference" (``scp``, ``roles``, ``azp``, ``idtyp``, v1 ``sts.windows.net`` and
v2 issuers), "Microsoft identity platform and the OAuth 2.0 client credentials flow"
(``/.default`` scope), "AADSTS error codes"; and social-core's ``backends/azuread.py`` and
``azuread_tenant.py`` (which URLs it builds, which claims and key fields it checks).
"""

from __future__ import annotations

import base64
import hashlib
import html
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, urlencode, urlsplit

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.live import LiveServer

GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
CODE_LIFETIME = 600


@lru_cache(maxsize=4)
def _test_key(index: int) -> rsa.RSAPrivateKey:
    # Generated once per test session (a 2048-bit key takes ~50 ms).
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _b64(number: int) -> str:
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class Identity:
    """A user of the tenant (or, with ``tid`` set, of another tenant)."""

    oid: str
    preferred_username: str
    name: str = ""
    email: str | None = None
    groups: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    tid: str | None = None
    given_name: str | None = None
    family_name: str | None = None


@dataclass
class Client:
    """An app registration: its client id, secret, redirect URIs and the app roles it was granted."""

    client_id: str
    secret: str
    redirect_uris: list[str] | None = None  # None: any loopback URI (tests use free ports)
    app_roles: list[str] = field(default_factory=list)
    sp_oid: str = field(default_factory=lambda: str(uuid.uuid4()))


class FakeAzureAD:
    """One fake tenant with an app registration for the portal (the API's audience is its client id)."""

    def __init__(self, *, tenant_id: str | None = None, client_id: str | None = None,
                 client_secret: str | None = None) -> None:  # fmt: skip
        self.tenant_id = tenant_id or str(uuid.uuid4())
        self.client_id = client_id or str(uuid.uuid4())
        self.client_secret = client_secret or secrets.token_urlsafe(24)
        self.clients: dict[str, Client] = {self.client_id: Client(self.client_id, self.client_secret)}
        self.users: dict[str, Identity] = {}
        self.next_identity: Identity | None = None
        self.codes: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self._keys: list[tuple[str, rsa.RSAPrivateKey]] = []
        self._lock = threading.Lock()
        self._key_index = 0
        self.rotate_key()
        self.server = LiveServer(app=self)

    # --- running -------------------------------------------------------------------------------
    def start(self) -> Self:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The authority base URL (``AZURE_AD_AUTHORITY``)."""
        return self.server.url

    def reset(self) -> None:
        with self._lock:
            self.users.clear()
            self.codes.clear()
            self.requests.clear()
            self.next_identity = None
            self.clients = {self.client_id: Client(self.client_id, self.client_secret)}

    # --- test controls --------------------------------------------------------------------------
    def add_user(self, identity: Identity) -> Identity:
        self.users[identity.oid] = identity
        return identity

    def add_client(self, *, app_roles: list[str] | None = None) -> Client:
        """Register another application (a service calling the API with client credentials)."""
        client = Client(str(uuid.uuid4()), secrets.token_urlsafe(24), app_roles=list(app_roles or []))
        self.clients[client.client_id] = client
        return client

    def rotate_key(self, *, drop_old: bool = False) -> str:
        """Sign with a new key from now on; return its kid."""
        key = _test_key(self._key_index % 4)
        self._key_index += 1
        kid = f"fake-{self._key_index}-{secrets.token_hex(4)}"
        with self._lock:
            self._keys = ([] if drop_old else self._keys) + [(kid, key)]
        return kid

    def issuer(self, tid: str | None = None) -> str:
        return f"{self.url}/{tid or self.tenant_id}/v2.0"

    def sign(self, claims: dict[str, Any], *, kid: str | None = None, key: Any = None) -> str:
        """``claims`` as an RS256 JWT signed by the current key (or ``kid`` / a foreign ``key``)."""
        with self._lock:
            chosen_kid, chosen = self._keys[-1]
            if kid is not None:
                chosen_kid, chosen = next(k for k in self._keys if k[0] == kid)
        return jwt.encode(claims, key or chosen, algorithm="RS256",
                          headers={"kid": chosen_kid, "x5t": chosen_kid, "typ": "JWT"})  # fmt: skip

    def _base_claims(self, identity: Identity, *, aud: str, lifetime: int) -> dict[str, Any]:
        now = int(time.time())
        tid = identity.tid or self.tenant_id
        return {"aud": aud, "iss": self.issuer(tid), "iat": now, "nbf": now, "exp": now + lifetime,
                "oid": identity.oid, "tid": tid, "ver": "2.0", "uti": secrets.token_urlsafe(16),
                "rh": "0.fake.", "aio": secrets.token_urlsafe(12)}  # fmt: skip

    def id_token(self, identity: Identity, *, client_id: str | None = None, nonce: str | None = None,
                 lifetime: int = 3600) -> str:  # fmt: skip
        client_id = client_id or self.client_id
        claims = self._base_claims(identity, aud=client_id, lifetime=lifetime)
        claims.update(
            sub=_pairwise(identity.oid, client_id), name=identity.name or identity.preferred_username,
            preferred_username=identity.preferred_username,
        )  # fmt: skip
        for name in ("email", "given_name", "family_name"):
            if getattr(identity, name):
                claims[name] = getattr(identity, name)
        if identity.groups:
            claims["groups"] = list(identity.groups)
        if identity.roles:
            claims["roles"] = list(identity.roles)
        if nonce:
            claims["nonce"] = nonce
        return self.sign(claims)

    def access_token(self, identity: Identity, *, audience: str | None = None, scopes: str = "access_as_user",
                     client_id: str | None = None, lifetime: int = 3600, **overrides: Any) -> str:  # fmt: skip
        """A delegated access token (a user via a client app) for ``audience`` (default: our API)."""
        client_id = client_id or self.client_id
        claims = self._base_claims(identity, aud=audience or self.client_id, lifetime=lifetime)
        claims.update(sub=_pairwise(identity.oid, client_id), azp=client_id, azpacr="1", scp=scopes,
                      name=identity.name, preferred_username=identity.preferred_username)  # fmt: skip
        if identity.roles:
            claims["roles"] = list(identity.roles)
        claims.update(overrides)
        return self.sign(claims)

    def app_token(self, client: Client, *, audience: str | None = None, lifetime: int = 3600,
                  **overrides: Any) -> str:  # fmt: skip
        """An app-only access token (client credentials) of ``client`` for ``audience``."""
        service = Identity(oid=client.sp_oid, preferred_username="")
        claims = self._base_claims(service, aud=audience or self.client_id, lifetime=lifetime)
        claims.update(sub=client.sp_oid, azp=client.client_id, azpacr="1", idtyp="app")
        if client.app_roles:
            claims["roles"] = list(client.app_roles)
        claims.update(overrides)
        return self.sign(claims)

    # --- the ASGI app ---------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The ASGI app (an async ``__call__``, so uvicorn sees ASGI 3)."""
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        method, path = scope["method"], scope["path"]
        self.requests.append((method, path))
        query = dict(parse_qsl(scope.get("query_string", b"").decode()))
        form = dict(parse_qsl(body.decode())) if body else {}
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        status, reply_headers, payload = self._route(method, path, query, form, headers)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.encode(), v.encode()) for k, v in reply_headers.items()]})  # fmt: skip
        await send({"type": "http.response.body", "body": payload})

    def _route(self, method: str, path: str, query: dict[str, str], form: dict[str, str],
               headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
        parts = path.strip("/").split("/")
        if len(parts) < 2:
            return _json(404, {"error": "not_found"})
        tenant, rest = parts[0], "/".join(parts[1:])
        if tenant not in (self.tenant_id, "common", "organizations"):
            return _aad_error(400, "invalid_tenant", 90002, f"Tenant '{tenant}' not found.")
        if rest == "v2.0/.well-known/openid-configuration" and method == "GET":
            return _json(200, self.discovery(tenant))
        if rest == "discovery/v2.0/keys" and method == "GET":
            return _json(200, self.jwks())
        if rest == "oauth2/v2.0/authorize" and method in ("GET", "POST"):
            return self._authorize(
                {**query, **form}, chosen=form.get("account") if method == "POST" else None
            )
        if rest == "oauth2/v2.0/token" and method == "POST":
            return self._token(form, headers)
        return _json(404, {"error": "not_found"})

    def discovery(self, tenant: str) -> dict[str, Any]:
        base = f"{self.url}/{tenant}"
        return {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{self.url}/{self.tenant_id}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "claims_supported": [
                "sub",
                "iss",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "acr",
                "nonce",
                "preferred_username",
                "name",
                "tid",
                "ver",
                "at_hash",
                "c_hash",
                "email",
            ],  # fmt: skip
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "msgraph_host": "graph.microsoft.com",
        }

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            keys = list(self._keys)
        out = []
        for kid, key in keys:
            numbers = key.public_key().public_numbers()
            out.append({"kty": "RSA", "use": "sig", "kid": kid, "x5t": kid, "n": _b64(numbers.n), "e": _b64(numbers.e),
                        "issuer": f"{self.url}/{{tenantid}}/v2.0"})  # fmt: skip
        return {"keys": out}

    def _authorize(self, params: dict[str, str], chosen: str | None) -> tuple[int, dict[str, str], bytes]:
        client = self.clients.get(params.get("client_id", ""))
        if client is None:
            return _aad_page(
                400, 700016, f"Application with identifier '{params.get('client_id')}' was not found."
            )
        redirect_uri = params.get("redirect_uri", "")
        if not _redirect_allowed(client, redirect_uri):
            return _aad_page(400, 50011, "The redirect URI specified in the request does not match the redirect URIs "
                                         "configured for the application.")  # fmt: skip
        if params.get("response_type") != "code":
            return _aad_page(400, 700054, "response_type 'code' is required by this fake.")
        identity = self.users.get(chosen) if chosen else self.next_identity
        if identity is None:
            return 200, {"content-type": "text/html; charset=utf-8"}, self._picker(params).encode()
        code = secrets.token_urlsafe(32)
        self.codes[code] = {"identity": identity, "client_id": client.client_id, "redirect_uri": redirect_uri,
                            "nonce": params.get("nonce"), "challenge": params.get("code_challenge"),
                            "method": params.get("code_challenge_method", "plain"), "scope": params.get("scope", ""),
                            "expires": time.time() + CODE_LIFETIME}  # fmt: skip
        back = {"code": code, "session_state": str(uuid.uuid4())}
        if params.get("state"):
            back["state"] = params["state"]
        sep = "&" if "?" in redirect_uri else "?"
        return 302, {"location": f"{redirect_uri}{sep}{urlencode(back)}", "content-length": "0"}, b""

    def _picker(self, params: dict[str, str]) -> str:
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in params.items()
        )
        buttons = "".join(
            f'<button type="submit" name="account" value="{html.escape(u.oid)}" data-upn="{html.escape(u.preferred_username)}">'
            f"{html.escape(u.name or u.preferred_username)} ({html.escape(u.preferred_username)})</button>"
            for u in self.users.values()
        )  # fmt: skip
        return (f"<!doctype html><title>Sign in to your account</title><h1>Pick an account</h1>"
                f'<form method="post">{hidden}{buttons}</form>')  # fmt: skip

    def _client_auth(self, form: dict[str, str], headers: dict[str, str]) -> Client | None:
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        auth = headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
        client = self.clients.get(client_id)
        if client is None or not secrets.compare_digest(client.secret, secret):
            return None
        return client

    def _token(self, form: dict[str, str], headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        grant = form.get("grant_type")
        client = self._client_auth(form, headers)
        if client is None:
            return _aad_error(401, "invalid_client", 7000215, "Invalid client secret provided.")
        if grant == "authorization_code":
            entry = self.codes.pop(form.get("code", ""), None)  # single use
            if entry is None or entry["expires"] < time.time() or entry["client_id"] != client.client_id:
                return _aad_error(
                    400, "invalid_grant", 70008, "The provided authorization code is invalid or has expired."
                )
            if form.get("redirect_uri") != entry["redirect_uri"]:
                return _aad_error(
                    400, "invalid_grant", 50011, "The redirect URI does not match the authorization request."
                )
            if entry["challenge"] and not _pkce_ok(
                form.get("code_verifier", ""), entry["challenge"], entry["method"]
            ):
                return _aad_error(
                    400, "invalid_grant", 501481, "The Code_Verifier does not match the code_challenge."
                )
            identity: Identity = entry["identity"]
            scope = entry["scope"] or "openid profile email"
            api = [s for s in scope.split() if s.startswith("api://")]
            audience = api[0].split("/")[2] if api else GRAPH_APP_ID
            access = self.access_token(identity, audience=audience, scopes=" ".join(s.rsplit("/", 1)[-1] for s in scope.split()),
                                       client_id=client.client_id)  # fmt: skip
            return _json(200, {"token_type": "Bearer", "scope": scope, "expires_in": 3599, "ext_expires_in": 3599,
                               "access_token": access,
                               "id_token": self.id_token(identity, client_id=client.client_id, nonce=entry["nonce"])})  # fmt: skip
        if grant == "client_credentials":
            scope = form.get("scope", "")
            if not scope.endswith("/.default"):
                return _aad_error(
                    400, "invalid_scope", 1002012, "The scope must end with /.default for client credentials."
                )
            resource = scope.removesuffix("/.default").removeprefix("api://")
            token = self.app_token(client, audience=resource)
            return _json(
                200,
                {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token},
            )
        return _aad_error(
            400, "unsupported_grant_type", 70003, f"The grant type {grant!r} is not supported here."
        )


def _pairwise(oid: str, client_id: str) -> str:
    return (
        base64.urlsafe_b64encode(hashlib.sha256(f"{oid}:{client_id}".encode()).digest())
        .rstrip(b"=")
        .decode()[:43]
    )


def _pkce_ok(verifier: str, challenge: str, method: str) -> bool:
    if method == "S256":
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        return secrets.compare_digest(digest, challenge)
    return secrets.compare_digest(verifier, challenge)


def _redirect_allowed(client: Client, redirect_uri: str) -> bool:
    if client.redirect_uris is not None:
        return redirect_uri in client.redirect_uris
    parts = urlsplit(redirect_uri)
    # Loopback servers, and Django's test client (host "testserver").
    return parts.scheme in ("http", "https") and parts.hostname in ("127.0.0.1", "localhost", "testserver")


def _json(status: int, payload: Any) -> tuple[int, dict[str, str], bytes]:
    body = orjson.dumps(payload)
    return status, {"content-type": "application/json; charset=utf-8", "content-length": str(len(body)),
                    "cache-control": "no-store"}, body  # fmt: skip


def _aad_error(status: int, error: str, code: int, text: str) -> tuple[int, dict[str, str], bytes]:
    trace = str(uuid.uuid4())
    return _json(status, {"error": error, "error_description": f"AADSTS{code}: {text} Trace ID: {trace}",
                          "error_codes": [code], "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
                          "trace_id": trace, "correlation_id": str(uuid.uuid4())})  # fmt: skip


def _aad_page(status: int, code: int, text: str) -> tuple[int, dict[str, str], bytes]:
    body = f"<!doctype html><title>Sign in</title><p>AADSTS{code}: {html.escape(text)}</p>".encode()
    return status, {"content-type": "text/html; charset=utf-8", "content-length": str(len(body))}, body
