"""The settings pick the servers when pointed at them and the embedded backends otherwise."""

from __future__ import annotations

from django.conf import settings
from django.db import connection


def test_database_engine_follows_database_url() -> None:
    url = settings.DATABASE_URL
    expected = "postgresql" if url.startswith(("postgres://", "postgresql://")) else "sqlite"
    assert connection.vendor == expected


def test_channel_layer_and_broker_follow_redis_url() -> None:
    backend = settings.CHANNEL_LAYERS["default"]["BACKEND"]
    if settings.REDIS_URL:
        assert backend == "channels_redis.core.RedisChannelLayer"
        assert settings.CELERY_BROKER_URL.startswith("redis://")
    else:
        assert backend == "channels.layers.InMemoryChannelLayer"
        assert settings.CELERY_BROKER_URL == "filesystem://"
