"""The change signal: a number that grows whenever cached gateway state changes.

Redis holds it when REDIS_URL is set (one GET per poll), the ConfigGeneration row otherwise.
"""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.db.models import F

REDIS_KEY = "gateway:{config}:generation"


def _sync_redis():
    import redis

    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)


def bump() -> None:
    """Announce a change, once the surrounding transaction commits."""
    transaction.on_commit(_bump_now)


def _bump_now() -> None:
    from gateway.models import ConfigGeneration

    updated = ConfigGeneration.objects.filter(pk=1).update(value=F("value") + 1)
    if not updated:
        ConfigGeneration.objects.get_or_create(pk=1, defaults={"value": 1})
    if settings.REDIS_URL:
        client = _sync_redis()
        try:
            client.incr(REDIS_KEY)
        finally:
            client.close()


def read_db() -> int:
    """The generation from the database (embedded mode)."""
    from gateway.models import ConfigGeneration

    row = ConfigGeneration.objects.filter(pk=1).values_list("value", flat=True).first()
    return int(row or 0)
