from __future__ import annotations

from django.apps import AppConfig


class ConfigConfig(AppConfig):
    """Holds the project-wide checks and management commands (serve, seed_demo)."""

    name = "config"
    verbose_name = "Platform"

    def ready(self) -> None:
        from config import checks  # noqa: F401  (registers the system checks)
