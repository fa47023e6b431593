"""`manage.py quotas_rebuild`: recompute the live counters of the current windows from the ledger."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from quotas.rebuild import counters_rebuild


class Command(BaseCommand):
    help = "Rebuild the quota counters (Redis or database) of the current windows from the usage ledger."

    def handle(self, *args: Any, **options: Any) -> None:
        count = counters_rebuild(force=True)
        self.stdout.write(f"rebuilt {count} counters from the ledger")
