"""System checks that make `manage.py check --deploy` refuse unsafe production settings."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, register


@register(Tags.security, deploy=True)
def check_secret_key(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """The built-in development SECRET_KEY is public: refuse it in production."""
    if settings.SECRET_KEY == settings.DEV_SECRET_KEY:
        return [
            Error(
                "SECRET_KEY is the public development default.",
                hint="Set SECRET_KEY (or SECRET_KEY_FILE) to a long random value.",
                id="config.E001",
            )
        ]
    return []
