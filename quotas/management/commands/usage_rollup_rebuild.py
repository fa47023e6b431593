"""`manage.py usage_rollup_rebuild [--since YYYY-MM-DD] [--until YYYY-MM-DD]`: recompute the rollups.

The rollups are kept up to date as the ledger is written; rebuild them after changing
QUOTA_TIME_ZONE, after importing or deleting ledger rows, or to check them.
"""

from __future__ import annotations

import time
from datetime import date
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from quotas.rollups import rollups_rebuild


def _day(value: str | None) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"not a date (YYYY-MM-DD): {value!r}") from None


class Command(BaseCommand):
    help = "Recompute the daily usage rollups (all days, or a range) from the ledger."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--since", help="first day to rebuild (QUOTA_TIME_ZONE), default: the beginning")
        parser.add_argument("--until", help="last day to rebuild (inclusive), default: today")

    def handle(self, *args: Any, **opts: Any) -> None:
        since, until = _day(opts["since"]), _day(opts["until"])
        if since and until and since > until:
            raise CommandError("--since is after --until")
        started = time.perf_counter()
        count = rollups_rebuild(since=since, until=until)
        self.stdout.write(f"rolled up {count} usage events in {time.perf_counter() - started:.1f}s")
