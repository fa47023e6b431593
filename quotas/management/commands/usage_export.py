"""`manage.py usage_export --since YYYY-MM-DD --until YYYY-MM-DD [--format csv|jsonl] [--output FILE]`.

Streams the ledger rows of a period (days in QUOTA_TIME_ZONE, both inclusive) oldest first, in
chunks from a database cursor (a server-side cursor on PostgreSQL), so a period of any size runs
in constant memory. Progress goes to standard error every ``--progress-every`` rows.

Columns (README "Management commands"): the ledger's own, plus the key's name hint, the username
and the app slug for reading. No secret: a key appears by id and hint (its first and last
characters, as the admin console shows them), never its digest. Amounts are exact decimal strings.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any, cast

from django.core.management.base import BaseCommand, CommandError

from quotas.export import _cell
from quotas.models import UsageEvent
from quotas.rollups import zone

# (column, ledger field) in output order; the three lookups are joined, not stored in the ledger.
COLUMNS = (
    ("id", "id"), ("request_id", "request_id"), ("created_at", "created_at"), ("key_id", "key_id"),
    ("key_hint", "key__hint"), ("user_id", "user_id"), ("username", "user__username"), ("group_ids", "group_ids"),
    ("app_id", "app_id"), ("app_slug", "app__slug"), ("endpoint", "endpoint"), ("provider", "provider"),
    ("deployment", "deployment"), ("model", "model"), ("prompt_tokens", "prompt_tokens"),
    ("completion_tokens", "completion_tokens"), ("cached_tokens", "cached_tokens"), ("images", "images"),
    ("audio_seconds", "audio_seconds"), ("cost_usd", "cost_usd"), ("latency_ms", "latency_ms"),
    ("ttft_ms", "ttft_ms"), ("status", "status"), ("error_kind", "error_kind"), ("streamed", "streamed"),
    ("tokens_estimated", "tokens_estimated"), ("counted", "counted"), ("prompt_id", "prompt_id"),
    ("prompt_version", "prompt_version"),
)  # fmt: skip
HEADER = [name for name, _ in COLUMNS]
CHUNK_SIZE = 2000


def _day(value: str, flag: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{flag}: not a date (YYYY-MM-DD): {value!r}") from None


def period_bounds(since: date, until: date) -> tuple[datetime, datetime]:
    """[start, end) in UTC of the days ``since``..``until`` (inclusive) in QUOTA_TIME_ZONE."""
    tz = zone()
    start = datetime.combine(since, datetime.min.time(), tzinfo=tz).astimezone(UTC)
    end = datetime.combine(until + timedelta(days=1), datetime.min.time(), tzinfo=tz).astimezone(UTC)
    return start, end


def usage_rows(*, start: datetime, end: datetime) -> Iterator[dict[str, Any]]:
    """The ledger rows with ``start <= created_at < end``, oldest first, as JSON-safe dicts, streamed."""
    rows = (
        UsageEvent.objects.filter(created_at__gte=start, created_at__lt=end)
        .order_by("created_at", "id")
        .values_list(*(field for _, field in COLUMNS))
    )
    for values in rows.iterator(chunk_size=CHUNK_SIZE):
        row = dict(zip(HEADER, values, strict=True))
        row["created_at"] = row["created_at"].astimezone(UTC).isoformat()
        row["audio_seconds"] = f"{row['audio_seconds']:f}"
        row["cost_usd"] = f"{row['cost_usd']:f}"
        row["group_ids"] = [int(g) for g in row["group_ids"] or []]
        yield row


def _csv_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return "" if value is None else _cell(value)


class Command(BaseCommand):
    help = "Export the usage ledger of a period (days in QUOTA_TIME_ZONE, inclusive) as CSV or JSON lines."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--since", required=True, help="first day, YYYY-MM-DD")
        parser.add_argument("--until", required=True, help="last day (inclusive), YYYY-MM-DD")
        parser.add_argument("--format", choices=("csv", "jsonl"), default="csv")
        parser.add_argument("--output", type=Path, help="file to write; standard output when omitted")
        parser.add_argument("--progress-every", type=int, default=100_000, help="rows between progress lines")

    def handle(self, *args: Any, **opts: Any) -> None:
        since, until = _day(opts["since"], "--since"), _day(opts["until"], "--until")
        if since > until:
            raise CommandError("--since is after --until")
        start, end = period_bounds(since, until)
        output: Path | None = opts["output"]
        if output is None:
            # The raw stream: the csv writer ends its own lines (OutputWrapper would add another).
            count = self._write(cast(IO[str], self.stdout._out), start, end, opts)
        else:
            with output.open("w", encoding="utf-8", newline="") as handle:
                count = self._write(handle, start, end, opts)
        self.stderr.write(f"exported {count} usage events ({since}..{until})")

    def _write(self, out: IO[str], start: datetime, end: datetime, opts: dict[str, Any]) -> int:
        every, started, count = max(1, opts["progress_every"]), time.monotonic(), 0
        writer = csv.writer(out) if opts["format"] == "csv" else None
        if writer is not None:
            writer.writerow(HEADER)
        for row in usage_rows(start=start, end=end):
            if writer is not None:
                writer.writerow([_csv_value(row[name]) for name in HEADER])
            else:
                out.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
            count += 1
            if count % every == 0:
                self.stderr.write(f"{count} rows, {time.monotonic() - started:.0f}s, at {row['created_at']}")
        out.flush()
        return count
