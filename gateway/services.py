"""Gateway workflows used by admin, management commands and the portal."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from gateway import keys
from gateway.models import ApiKey
from portal import audit
from portal.models import App


def _key_create(*, name: str, user: User | None, app: App | None, models: Iterable[str],
                expires_at: datetime | None, created_by: User | None, **extra: Any) -> tuple[ApiKey, str]:  # fmt: skip
    if (user is None) == (app is None):
        raise ValueError("a key belongs to exactly one user or one app")
    plaintext = keys.generate()
    key = ApiKey(name=name, user=user, app=app, allowed_models=sorted(set(models)), expires_at=expires_at,
                 created_by=created_by, **extra)  # fmt: skip
    key.set_secret(plaintext)
    key.save()
    return key, plaintext


@transaction.atomic
def key_issue(
    *,
    name: str,
    user: User | None = None,
    app: App | None = None,
    models: Iterable[str] = (),
    expires_at: datetime | None = None,
    created_by: User | None = None,
) -> tuple[ApiKey, str]:
    """Issue a key for ``user`` or ``app``; return it with its plaintext (shown once, never stored)."""
    key, plaintext = _key_create(name=name, user=user, app=app, models=models, expires_at=expires_at,
                                 created_by=created_by)  # fmt: skip
    audit.record(action="key.issued", instance=key, actor=created_by)
    return key, plaintext


@transaction.atomic
def key_revoke(*, key: ApiKey, actor: User | None = None) -> ApiKey:
    """Revoke ``key`` now; every process refuses it within about a second."""
    if key.revoked_at is None:
        before = audit.snapshot(key)[0]
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
        audit.record(action="key.revoked", instance=key, actor=actor, before=before)
    return key


@transaction.atomic
def key_rotate(
    *, key: ApiKey, actor: User | None = None, grace: timedelta | None = None
) -> tuple[ApiKey, str]:
    """Issue a replacement for ``key`` (same owner, name, models, limits) and let the old one expire.

    The old key keeps working for ``grace`` (API_KEY_ROTATION_GRACE_HOURS by default), so its
    users can switch without downtime. Quota rules on the old key are copied to the new one. One
    audit row, ``key.rotated`` on the old key, names the replacement.
    """
    from quotas.models import QuotaRule

    if key.revoked_at is not None:
        raise ValueError("a revoked key cannot be rotated")
    grace = grace if grace is not None else timedelta(hours=settings.API_KEY_ROTATION_GRACE_HOURS)
    before = audit.snapshot(key)[0]
    extra = {f: getattr(key, f) for f in ("allowed_regions", "allowed_providers") if hasattr(key, f)}
    new, plaintext = _key_create(name=key.name, user=key.user, app=key.app, models=key.allowed_models,
                                 expires_at=key.expires_at, created_by=actor, **extra)  # fmt: skip
    for rule in QuotaRule.objects.filter(key=key):
        rule.pk = None
        rule.key = new
        rule.save()
        audit.suppress(rule)
    ends = timezone.now() + grace
    if key.expires_at is None or key.expires_at > ends:
        key.expires_at = ends
        key.save(update_fields=["expires_at"])
    audit.suppress(new)
    audit.record(action="key.rotated", instance=key, actor=actor, before=before,
                 extra={"replaced_by": new.pk, "replacement": str(new)})  # fmt: skip
    return new, plaintext


@transaction.atomic
def keys_revoke_for_users(*, users: Iterable[User], actor: User | None = None) -> int:
    """Revoke every active key of ``users`` (a leaver); return how many were revoked."""
    revoked = 0
    for key in ApiKey.objects.filter(user__in=list(users), revoked_at__isnull=True):
        key_revoke(key=key, actor=actor)
        revoked += 1
    return revoked
