"""`manage.py credentials_rotate`: re-encrypt every stored provider credential under the newest key.

Rotation: put a new Fernet key first in CREDENTIALS_KEYS (keep the old ones after it), restart, run
this command, then drop the old keys. Idempotent; one transaction.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from gateway import crypto
from gateway.models import Provider


class Command(BaseCommand):
    help = "Re-encrypt provider credentials under the first key of CREDENTIALS_KEYS."

    def handle(self, *args: Any, **options: Any) -> None:
        rotated = 0
        with transaction.atomic():
            for provider in Provider.objects.select_for_update().exclude(api_key_encrypted=""):
                try:
                    provider.api_key_encrypted = crypto.rotate(provider.api_key_encrypted)
                except ValueError as exc:
                    raise CommandError(f"provider {provider.name}: {exc}; nothing was changed") from None
                provider.save(update_fields=["api_key_encrypted"])
                rotated += 1
        self.stdout.write(f"re-encrypted {rotated} provider credential(s) under the newest key")
