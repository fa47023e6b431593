"""`manage.py usage_export`: the ledger of a period, streamed as CSV or JSON lines, without secrets."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test.utils import override_settings

from gateway.models import ApiKey
from gateway.services import key_issue
from quotas.management.commands.usage_export import HEADER
from quotas.models import UsageEvent

pytestmark = pytest.mark.django_db

# 300 events, one every 10 minutes from 2026-03-01 00:00 UTC: 144 per UTC day, the last on 03-03.
START = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def ledger(alice: Any) -> tuple[ApiKey, str]:
    key, plaintext = key_issue(user=alice, name="export test")
    UsageEvent.objects.bulk_create(
        UsageEvent(request_id=f"req_{i:04d}", created_at=START + timedelta(minutes=10 * i), key=key, user=alice,
                   group_ids=[3, 5] if i % 2 else [], endpoint="chat/completions", provider="local",
                   deployment="local/m", model="=cmd()" if i == 7 else "gpt-4o-mini", prompt_tokens=i,
                   completion_tokens=1, cost_usd=Decimal("0.0000012345"), latency_ms=20, status=200,
                   streamed=bool(i % 3 == 0))
        for i in range(300)
    )  # fmt: skip
    return key, plaintext


def _export(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("usage_export", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@override_settings(QUOTA_TIME_ZONE="UTC")
def test_csv_holds_exactly_the_period_in_order_with_no_secret(ledger: tuple[ApiKey, str]) -> None:
    key, plaintext = ledger
    text, err = _export("--since", "2026-03-01", "--until", "2026-03-02", "--progress-every", "100")
    rows = list(csv.DictReader(StringIO(text)))
    assert list(rows[0]) == HEADER
    assert len(rows) == 288  # two UTC days of 144
    assert [r["request_id"] for r in rows] == [f"req_{i:04d}" for i in range(288)]
    first, odd = rows[0], rows[1]
    assert first["created_at"] == "2026-03-01T00:00:00+00:00" and first["username"] == "alice"
    assert first["key_id"] == str(key.pk) and first["key_hint"] == key.hint
    assert odd["group_ids"] == "3 5" and first["group_ids"] == "" and first["streamed"] == "true"
    assert first["cost_usd"] == "0.0000012345" and first["ttft_ms"] == ""
    assert rows[7]["model"] == "'=cmd()"  # a spreadsheet formula is quoted (CSV injection)
    assert plaintext not in text and key.digest not in text
    assert err.count(" rows, ") == 2 and "exported 288 usage events" in err  # progress at 100 and 200


def test_jsonl_to_a_file_and_the_day_boundaries_follow_the_quota_time_zone(
    ledger: tuple[ApiKey, str], tmp_path: Path
) -> None:
    path = tmp_path / "usage.jsonl"
    with override_settings(QUOTA_TIME_ZONE="Europe/Berlin"):  # UTC+1 in March: the day starts at 23:00 UTC
        out, err = _export(
            "--since", "2026-03-02", "--until", "2026-03-02", "--format", "jsonl", "--output", str(path)
        )
    assert out == ""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 144
    assert lines[0]["created_at"] == "2026-03-01T23:00:00+00:00"
    assert lines[-1]["created_at"] == "2026-03-02T22:50:00+00:00"
    assert lines[1]["group_ids"] == [3, 5] and isinstance(lines[0]["streamed"], bool)
    assert set(lines[0]) == set(HEADER) and lines[0]["cost_usd"] == "0.0000012345"


def test_an_empty_period_gives_only_the_header_and_bad_dates_are_refused(ledger: tuple[ApiKey, str]) -> None:
    text, err = _export("--since", "2025-01-01", "--until", "2025-01-31")
    assert text.strip() == ",".join(HEADER) and "exported 0 usage events" in err
    with pytest.raises(CommandError, match="after"):
        _export("--since", "2026-03-02", "--until", "2026-03-01")
    with pytest.raises(CommandError, match="not a date"):
        _export("--since", "yesterday", "--until", "2026-03-01")
