"""Identity: sign-in through Azure AD (Entra ID), group sync, and the local break-glass login.

- ``EntraID`` is social-auth's v2 tenant backend pointed at ``AZURE_AD_AUTHORITY`` (so tests and
  sovereign clouds can use another authority) and reading its client and tenant from our settings.
  It names an account by the token's tenant id and object id, ``f"{tid}:{oid}"`` (stored as the
  social-auth uid), never by e-mail or preferred_username, which users and admins can change. A
  token of any other tenant than ``AZURE_AD_TENANT_ID`` is refused. No token is stored.
- The pipeline steps below (``refuse_linking``, ``user_details``, ``sync_groups``) complete
  social-auth's own; ``identity_sync`` maps the token's groups and app roles to departments and
  admin flags through the admin-managed ``GroupMapping`` rows, at every sign-in.
- ``LocalPasswordBackend`` is Django's password login limited by ``LOCAL_LOGIN`` (``on``,
  ``superusers`` for break-glass admins only, or ``off``). It stays installed in every mode because
  Django asks the model backend for everyone's permissions. It also throttles password guessing on
  every login page (the portal's and the admin's): LOGIN_THROTTLE_FAILURES failures per username and
  address within LOGIN_THROTTLE_WINDOW_SECONDS, counted in the cache, and the next attempt is a 429.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import uuid
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import Group, User
from django.contrib.auth.signals import user_logged_in
from django.core.cache import cache
from django.core.checks import CheckMessage, Error, Warning, register
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from social_core.backends.azuread_tenant import AzureADV2TenantOAuth2
from social_core.exceptions import AuthPolicyError, SocialAuthBaseException
from social_django.middleware import SocialAuthExceptionMiddleware

from portal import audit
from portal.models import GroupMapping

logger = logging.getLogger(__name__)

BACKEND_NAME = "entra-id"
LOCAL_LOGIN_CHOICES = ("on", "superusers", "off")


def entra_configured() -> bool:
    """Whether sign-in through Entra ID is set up (tenant and client)."""
    return bool(settings.AZURE_AD_TENANT_ID and settings.AZURE_AD_CLIENT_ID)


def authority_base() -> str:
    """The tenant's authority, e.g. ``https://login.microsoftonline.com/<tenant id>``."""
    return f"{settings.AZURE_AD_AUTHORITY.rstrip('/')}/{settings.AZURE_AD_TENANT_ID}"


def account_uid(tid: str, oid: str) -> str:
    """The stable key of an Entra ID account: tenant id and object id (both GUIDs, lower case)."""
    return f"{tid.lower()}:{oid.lower()}"


class EntraID(AzureADV2TenantOAuth2):
    """Azure AD v2 tenant sign-in, matched on tid + oid, for the configured tenant only."""

    name = BACKEND_NAME
    ID_KEY = "tid_oid"
    # social-auth would otherwise try to find old accounts by preferred_username: never.
    LEGACY_ID_KEYS: tuple[str, ...] = ()
    DEFAULT_SCOPE = ["openid", "profile", "email"]

    def setting(self, name: str, default: Any = None) -> Any:
        # Read live from our settings (not SOCIAL_AUTH_* copies), so an override reaches the backend.
        live = {
            "KEY": settings.AZURE_AD_CLIENT_ID or None,
            "SECRET": settings.AZURE_AD_CLIENT_SECRET or None,
            "TENANT_ID": settings.AZURE_AD_TENANT_ID or default,
            # Microsoft recommends PKCE for confidential clients too.
            "USE_PKCE": True,
        }
        if name in live:
            return live[name]
        return super().setting(name, default)

    @property
    def base_url(self) -> str:
        return authority_base()

    def get_user_id(self, details: dict[str, Any], response: dict[str, Any]) -> str:
        tid, oid = response.get("tid"), response.get("oid")
        if not isinstance(tid, str) or not isinstance(oid, str) or not tid or not oid:
            raise AuthPolicyError(self, "The token names no tenant and object id.")
        if tid.lower() != settings.AZURE_AD_TENANT_ID.lower():
            raise AuthPolicyError(self, "This account belongs to another organisation (tenant).")
        return account_uid(tid, oid)

    def get_user_details(self, response: dict[str, Any]) -> dict[str, Any]:
        upn = str(response.get("preferred_username") or "")
        email = str(response.get("email") or (upn if "@" in upn else ""))
        return {
            # Only the first choice of a username for a new account; never used to find one.
            "username": upn or email or str(response.get("oid") or ""),
            "email": email,
            "fullname": response.get("name"),
            "first_name": response.get("given_name"),
            "last_name": response.get("family_name"),
        }

    def extra_data(self, user: Any, uid: str, response: dict[str, Any], details: dict[str, Any],
                   pipeline_kwargs: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        # No access, refresh or id token in the database: the portal does not call Graph.
        return {"tid": response.get("tid"), "oid": response.get("oid"), "auth_time": response.get("iat")}

    def get_user(self, user_id: Any) -> Any:
        # A disabled user's Entra ID session ends at their next request.
        user = super().get_user(user_id)
        return user if user is not None and user.is_active else None


class LoginThrottled(Exception):
    """Too many failed password sign-ins for one username from one address (LOGIN_THROTTLE_*)."""


def _throttle_key(request: HttpRequest, username: str) -> str:
    address = str(request.META.get("REMOTE_ADDR") or "")
    digest = hashlib.sha256(f"{username.strip().lower()}\0{address}".encode()).hexdigest()[:40]
    return f"login-failures:{digest}"


def throttled_response() -> HttpResponse:
    """The 429 page of a locked-out username and address."""
    minutes = max(1, round(settings.LOGIN_THROTTLE_WINDOW_SECONDS / 60))
    body = (
        "<!doctype html><html lang=en><meta charset=utf-8><title>Too many sign-in attempts</title>"
        "<h1>Too many sign-in attempts</h1>"
        f"<p>Too many failed sign-ins for this account from your address. Try again in {minutes} minutes.</p>"
    )
    response = HttpResponse(body, status=429)
    response["Retry-After"] = str(settings.LOGIN_THROTTLE_WINDOW_SECONDS)
    return response


class LocalPasswordBackend(ModelBackend):
    """Username and password, as LOCAL_LOGIN allows; permissions for every user."""

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> User | None:
        if settings.LOCAL_LOGIN == "off":
            return None
        if request is None or not username:
            return super().authenticate(request, username=username, password=password, **kwargs)
        key = _throttle_key(request, username)
        if (cache.get(key) or 0) >= settings.LOGIN_THROTTLE_FAILURES:
            raise LoginThrottled  # before the password is even checked; SignInErrorMiddleware answers 429
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is None:
            # A fixed window from the first failure: add() sets the expiry, incr() keeps it.
            cache.add(key, 0, settings.LOGIN_THROTTLE_WINDOW_SECONDS)
            try:
                cache.incr(key)
            except ValueError:  # expired between the two calls
                cache.set(key, 1, settings.LOGIN_THROTTLE_WINDOW_SECONDS)
        else:
            cache.delete(key)
        return user

    def user_can_authenticate(self, user: Any) -> bool:
        if not super().user_can_authenticate(user):
            return False
        if settings.LOCAL_LOGIN == "off":
            return False
        if settings.LOCAL_LOGIN == "superusers":
            return bool(getattr(user, "is_superuser", False))
        return True


class LoginView(auth_views.LoginView):
    """Django's login page, offering Entra ID and (when LOCAL_LOGIN allows) the password form."""

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["entra_enabled"] = entra_configured()
        context["local_login"] = settings.LOCAL_LOGIN != "off"
        return context


class SignInErrorMiddleware(SocialAuthExceptionMiddleware):
    """A refused Entra ID sign-in goes back to the login page with a message, and is audited."""

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, LoginThrottled):
            logger.warning("password sign-in throttled from %s", request.META.get("REMOTE_ADDR"))
            return throttled_response()
        if isinstance(exception, SocialAuthBaseException) and getattr(request, "social_strategy", None):
            audit.record(action="auth.refused", object_type="auth.user", object_repr=BACKEND_NAME,
                         after={"reason": (getattr(exception, "detail", "") or str(exception))[:200],
                                "code": str(getattr(exception, "code", ""))},
                         ip=request.META.get("REMOTE_ADDR"), actor="entra-id")  # fmt: skip
        return super().process_exception(request, exception)

    def get_message(self, request: HttpRequest, exception: Exception) -> str:
        return f"Sign-in refused: {getattr(exception, 'detail', '') or exception}"


# --- pipeline steps -------------------------------------------------------------------------------
def refuse_linking(backend: Any, uid: str, user: Any = None, *args: Any, **kwargs: Any) -> None:
    """A signed-in user may not attach another Entra ID account to theirs (no login CSRF linking)."""
    if user is None:
        return
    social = backend.strategy.storage.user.get_social_auth(backend.name, uid, id_key=backend.id_key())
    if social is None or social.user != user:
        raise AuthPolicyError(backend, f"You are signed in as {user.get_username()}; sign out first.")


def user_details(user: Any = None, details: dict[str, Any] | None = None, *args: Any, **kwargs: Any) -> None:
    """Refresh e-mail and names from the token at each sign-in (the username stays)."""
    if user is None or not details:
        return
    changed = []
    for name in ("email", "first_name", "last_name"):
        value = details.get(name)
        if isinstance(value, str) and getattr(user, name) != value[:150]:
            setattr(user, name, value[:150])
            changed.append(name)
    if changed:
        user.save(update_fields=changed)


def sync_groups(user: Any = None, response: dict[str, Any] | None = None, *args: Any, **kwargs: Any) -> None:
    """Apply the group mapping to the signed-in user."""
    if user is not None and response is not None:
        identity_sync(user=user, claims=response)


@transaction.atomic
def identity_sync(*, user: User, claims: dict[str, Any]) -> dict[str, Any]:
    """Make ``user``'s mapped departments and admin flags match the token's groups and app roles.

    Groups that no mapping names are left alone, and so are token groups that no mapping names.
    The flags follow the token only when some mapping grants one (otherwise they are the admins').
    When the token carries a groups *overage* (too many groups to list, ``_claim_names``), memberships
    that come from group mappings are kept as they are: only app roles are applied.
    """
    token_groups = {str(g).lower() for g in claims.get("groups") or () if isinstance(g, str)}
    token_roles = {str(r) for r in claims.get("roles") or () if isinstance(r, str)}
    overage = "groups" not in claims and (
        "groups" in (claims.get("_claim_names") or {}) or bool(claims.get("hasgroups"))
    )
    mappings = list(GroupMapping.objects.select_related("group"))
    matched = [
        m for m in mappings
        if (m.source == GroupMapping.Source.GROUP and m.value.lower() in token_groups)
        or (m.source == GroupMapping.Source.ROLE and m.value in token_roles)
    ]  # fmt: skip
    managed = {m.group_id for m in mappings if m.group_id is not None}
    if overage:
        logger.warning("groups overage in the token of user %s: group memberships kept", user.pk)
        managed -= {m.group_id for m in mappings if m.source == GroupMapping.Source.GROUP}
    target = {m.group_id for m in matched if m.group_id is not None}
    current = set(user.groups.values_list("id", flat=True))
    before = {"groups": sorted(current), "is_staff": user.is_staff, "is_superuser": user.is_superuser}
    remove = (current & managed) - target
    add = target - current
    if remove:
        user.groups.remove(*remove)
    if add:
        user.groups.add(*Group.objects.filter(pk__in=add))
    if any(m.grants_staff or m.grants_superuser for m in mappings):
        user.is_superuser = any(m.grants_superuser for m in matched)
        user.is_staff = user.is_superuser or any(m.grants_staff for m in matched)
        if (user.is_staff, user.is_superuser) != (before["is_staff"], before["is_superuser"]):
            user.save(update_fields=["is_staff", "is_superuser"])
    after = {
        "groups": sorted((current - remove) | add),
        "is_staff": user.is_staff,
        "is_superuser": user.is_superuser,
    }
    if after != before:
        audit.record(action="identity.sync", instance=user, actor="entra-id", before=before, after=after,
                     replaces_generic=False)  # fmt: skip
    return after


@transaction.atomic
def user_disable(*, user: User, actor: User | None = None) -> int:
    """Disable ``user`` everywhere; return how many of their keys were revoked.

    They can no longer sign in (password or Entra ID), their sessions end at their next request
    (both backends refuse inactive users), every key is revoked and their Entra ID API tokens are
    refused (the change signal drops the gateway's cached principals within about a second).
    """
    from gateway.services import keys_revoke_for_users

    before = audit.snapshot(user)[0]
    if user.is_active:
        user.is_active = False
        user.save(update_fields=["is_active"])
    audit.record(action="user.disabled", instance=user, actor=actor, before=before)
    return keys_revoke_for_users(users=[user], actor=actor)


def _on_login(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    method = "entra-id" if getattr(user, "backend", "").endswith(".EntraID") else "password"
    audit.record(action="auth.login", instance=user, actor=user, after={"method": method},
                 ip=request.META.get("REMOTE_ADDR") if request is not None else None,
                 replaces_generic=False)  # fmt: skip


def connect() -> None:
    user_logged_in.connect(_on_login, dispatch_uid="identity-audit-login")


# --- system checks ----------------------------------------------------------------------------------
@register("identity")
def check_identity(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The Entra ID settings make sense together."""
    problems: list[CheckMessage] = []
    if settings.LOCAL_LOGIN not in LOCAL_LOGIN_CHOICES:
        problems.append(
            Error(f"LOCAL_LOGIN must be one of {', '.join(LOCAL_LOGIN_CHOICES)}.", id="identity.E001")
        )
    if not (settings.AZURE_AD_TENANT_ID or settings.AZURE_AD_CLIENT_ID):
        return problems
    try:
        uuid.UUID(settings.AZURE_AD_TENANT_ID)
    except ValueError:
        problems.append(Error("AZURE_AD_TENANT_ID must be the tenant's id (a GUID), not its domain name.",
                              id="identity.E002"))  # fmt: skip
    if not settings.AZURE_AD_CLIENT_ID:
        problems.append(Error("AZURE_AD_CLIENT_ID is required with AZURE_AD_TENANT_ID.", id="identity.E003"))
    if not settings.AZURE_AD_CLIENT_SECRET:
        problems.append(Warning("AZURE_AD_CLIENT_SECRET is empty: sign-in needs a secret or a federated token.",
                                id="identity.W001"))  # fmt: skip
    parts = urlsplit(settings.AZURE_AD_AUTHORITY)
    if parts.scheme != "https" and not _loopback(parts.hostname or ""):
        problems.append(Error("AZURE_AD_AUTHORITY must be https (plain http only for a loopback test IdP).",
                              id="identity.E004"))  # fmt: skip
    return problems


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
