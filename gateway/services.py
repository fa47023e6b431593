"""Gateway workflows used by admin, management commands and the portal."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from gateway import keys
from gateway.models import ApiKey
from portal.models import App


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
    if (user is None) == (app is None):
        raise ValueError("a key belongs to exactly one user or one app")
    plaintext = keys.generate()
    key = ApiKey(name=name, user=user, app=app, allowed_models=sorted(set(models)), expires_at=expires_at,
                 created_by=created_by)  # fmt: skip
    key.set_secret(plaintext)
    key.save()
    return key, plaintext


@transaction.atomic
def key_revoke(*, key: ApiKey) -> ApiKey:
    """Revoke ``key`` now; every process refuses it within about a second."""
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
    return key
