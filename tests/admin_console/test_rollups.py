"""Daily rollups: kept exact by the ledger writer (duplicates never count twice) and rebuildable."""

from __future__ import annotations

import io
import random
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command

from gateway.services import key_issue
from portal.models import App
from quotas.ledger import events_write
from quotas.models import DailyUsage, Grain, UsageEvent
from quotas.rollups import grain_for, rollup_totals, rollups_rebuild

pytestmark = pytest.mark.django_db


def event(n: int, *, ts: float, user: int | None = None, groups: list[int] | None = None, model: str = "m",
          status: int = 200, cost: str = "0.01", latency: int = 100, key: int | None = None,
          app: int | None = None) -> dict[str, Any]:  # fmt: skip
    return {"request_id": f"req_{n}", "ts": ts, "key_id": key, "user_id": user, "group_ids": groups or [],
            "app_id": app, "endpoint": "chat/completions", "provider": "p", "deployment": "p/m", "model": model,
            "prompt_tokens": 10, "completion_tokens": 5, "cached_tokens": 0, "images": 0, "audio_seconds": "0",
            "cost_usd": cost, "latency_ms": latency, "ttft_ms": None, "status": status, "error_kind": "",
            "streamed": False, "tokens_estimated": False, "counted": True}  # fmt: skip


def snapshot(**filters: Any) -> list[tuple[Any, ...]]:
    """Every rollup row; cost_share to 8 decimals (a division: SQL and Python may round the 10th apart)."""
    fields = [f.name for f in DailyUsage._meta.concrete_fields if f.name != "id"]
    rows = DailyUsage.objects.filter(**filters).values(*fields)
    return sorted(tuple(str(round(v, 8) if k == "cost_share" else v) for k, v in r.items()) for r in rows)


def test_a_batch_is_rolled_up_and_a_resent_batch_counts_nothing(alice: User) -> None:
    now = datetime.now(tz=UTC).timestamp()
    batch = [event(i, ts=now, user=alice.pk, status=500 if i == 0 else 200, latency=700 if i == 0 else 100)
             for i in range(3)]  # fmt: skip
    events_write(events=batch + [batch[1]])  # a duplicate inside the batch
    events_write(events=batch)  # the whole batch again (a flusher crashed before trimming)
    assert UsageEvent.objects.count() == 3
    [row] = DailyUsage.objects.filter(grain=Grain.FULL)
    assert (row.requests, row.errors, row.prompt_tokens, row.completion_tokens) == (3, 1, 30, 15)
    assert row.cost_usd == Decimal("0.03") and row.latency_ms_sum == 900 and row.latency_ms_max == 700
    assert (row.lat_0, row.lat_2) == (2, 1)  # 100 ms ≤ 250 ms; 700 ms ≤ 1 s
    assert row.user_id == alice.pk and row.key_id == 0 and row.app_id == 0
    # Every grain without groups sums to the same; the group grains have no row (no groups).
    for grain in (Grain.APP_MODEL, Grain.USER, Grain.KEY):
        assert rollup_totals(grain)["requests"] == 3
    assert not DailyUsage.objects.filter(grain__in=[Grain.GROUP_APP_MODEL, Grain.GROUP_FULL]).exists()


def test_an_event_whose_key_or_user_was_deleted_meanwhile_is_kept_and_does_not_fail_its_batch(
    alice: User, bob: User
) -> None:
    now = datetime.now(tz=UTC).timestamp()
    key, _ = key_issue(name="short-lived", user=bob)
    batch = [
        event(1, ts=now, user=alice.pk),
        event(2, ts=now, user=bob.pk, key=key.pk),
        event(3, ts=now, user=alice.pk),
    ]
    key.delete()
    bob.delete()  # both between the request and the flush
    assert events_write(events=batch) == 3
    orphan = UsageEvent.objects.get(request_id="req_2")
    assert orphan.key_id is None and orphan.user_id is None and orphan.prompt_tokens == 10
    assert UsageEvent.objects.filter(user=alice).count() == 2


def test_a_member_of_two_groups_counts_in_both_and_is_charged_half_to_each(alice: User) -> None:
    a, b = Group.objects.create(name="a"), Group.objects.create(name="b")
    events_write(
        events=[event(1, ts=datetime.now(tz=UTC).timestamp(), user=alice.pk, groups=[a.pk, b.pk], cost="0.5")]
    )
    rows = {r.group_id: r for r in DailyUsage.objects.filter(grain=Grain.GROUP_APP_MODEL)}
    assert set(rows) == {a.pk, b.pk}
    assert all(
        r.cost_usd == Decimal("0.5") and r.cost_share == Decimal("0.25") and r.requests == 1
        for r in rows.values()
    )


def test_days_are_counted_in_the_quota_time_zone(settings: Any, alice: User) -> None:
    settings.QUOTA_TIME_ZONE = "Europe/Berlin"
    late = datetime(2026, 3, 10, 23, 30, tzinfo=UTC).timestamp()  # already 11 March in Berlin
    events_write(events=[event(1, ts=late, user=alice.pk)])
    assert DailyUsage.objects.get(grain=Grain.FULL).day == date(2026, 3, 11)


def test_a_rebuild_gives_the_rollups_the_writer_kept(alice: User, bob: User) -> None:
    groups = [Group.objects.create(name=f"g{i}").pk for i in range(3)]
    keys = [key_issue(name=f"k{i}", user=alice)[0].pk for i in range(2)]
    app = App.objects.create(name="app", slug="app", owner_group_id=groups[0]).pk
    rnd = random.Random(7)
    start = datetime(2026, 5, 1, tzinfo=UTC).timestamp()
    batch = [
        event(i, ts=start + rnd.uniform(0, 5 * 86400), user=rnd.choice([alice.pk, bob.pk, None]),
              groups=rnd.sample(groups, rnd.randint(0, 2)), model=rnd.choice(["a", "b"]),
              status=rnd.choice([200, 200, 429, 502]), cost=f"{rnd.uniform(0, 1):.6f}", latency=rnd.randint(10, 40000),
              key=rnd.choice([None, *keys]), app=rnd.choice([None, app]))
        for i in range(300)
    ]  # fmt: skip
    for i in range(0, 300, 70):
        events_write(events=batch[i : i + 70])
    kept = snapshot()
    assert rollup_totals()["requests"] == 300
    assert rollups_rebuild() == 300
    assert snapshot() == kept
    # A partial rebuild only touches its days.
    out = io.StringIO()
    call_command("usage_rollup_rebuild", "--since", "2026-05-03", "--until", "2026-05-03", stdout=out)
    assert "rolled up" in out.getvalue() and snapshot() == kept
    DailyUsage.objects.filter(day=date(2026, 5, 2)).delete()
    rollups_rebuild(since=date(2026, 5, 2), until=date(2026, 5, 2))
    assert snapshot() == kept


def test_queries_read_the_smallest_grain_that_can_answer() -> None:
    assert grain_for({"user"}) == Grain.USER
    assert grain_for({"model"}) == Grain.APP_MODEL
    assert grain_for({"group"}) == Grain.GROUP_APP_MODEL
    assert grain_for({"user", "model"}) == Grain.USER_MODEL
    assert grain_for({"user", "app"}) == Grain.FULL
    assert grain_for({"group", "user"}) == Grain.GROUP_USER
    assert grain_for({"group", "user", "model"}) == Grain.GROUP_FULL
