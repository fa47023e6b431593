from __future__ import annotations

from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Portal"

    def ready(self) -> None:
        from portal import audit, identity

        # The admin's autodiscovery ran first (django.contrib.admin is installed before us), so its
        # registry names every model the console can change.
        audit.connect(audit.admin_models())
        identity.connect()
