"""The maintenance beat's quota tasks: each gives the same result run once, twice, or on two workers at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time
from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core import mail
from django.db import connection
from django.db.models import Sum

from quotas import tasks
from quotas.ledger import events_write
from quotas.maintenance import COUNTER_GRACE_SECONDS, alerts_resend, counters_purge, rollups_heal
from quotas.models import DailyUsage, Grain, QuotaAlert, QuotaCounter, QuotaRule, UsageEvent
from quotas.rollups import day_of, zone
from quotas.windows import bounds
from tests.admin_console.test_rollups import event, snapshot
from tests.quotas.test_alerts import webhook

__all__ = ["webhook"]  # the fixture, shared with the soft-limit tests


def _at_once(count: int, work: Callable[[], Any]) -> list[Any]:
    """Run ``work`` in ``count`` threads released together; their results (an exception fails the test)."""
    barrier = threading.Barrier(count)
    results: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait(timeout=10)
            results.append(work())
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert len(results) == count
    return results


# --- rollups --------------------------------------------------------------------------------------------
def _days_ago(n: int, hour: int = 12) -> float:
    """``hour`` o'clock of the day ``n`` days before today, in QUOTA_TIME_ZONE, as epoch seconds."""
    day = day_of(datetime.now(tz=UTC)) - timedelta(days=n)
    return datetime.combine(day, dt_time(hour), tzinfo=zone()).timestamp()


def _ledger(user: User, group: Group) -> None:
    """Ten events on each of the last four days and today, then a drift: ledger rows deleted by hand."""
    events = [event(day * 100 + i, ts=_days_ago(day), user=user.pk, groups=[group.pk], model=f"m{i % 3}",
                     cost="0.25") for day in range(5) for i in range(10)]  # fmt: skip
    events_write(events=events)
    # Behind the writer's back (as a hand fix or a partial restore would): the rollups do not know.
    UsageEvent.objects.filter(request_id__in=["req_101", "req_102", "req_301", "req_5"]).delete()


def _requests(days_ago: int) -> int:
    day = day_of(datetime.now(tz=UTC)) - timedelta(days=days_ago)
    return int(DailyUsage.objects.filter(grain=Grain.FULL, day=day).aggregate(n=Sum("requests"))["n"] or 0)


@pytest.mark.django_db
def test_the_heal_puts_the_closed_days_right_and_leaves_today_alone(alice: User) -> None:
    engineering = Group.objects.create(name="engineering")
    _ledger(alice, engineering)
    # Drifted: the ledger holds 9, 8, 10, 9 and 10 rows of these days.
    assert [_requests(d) for d in range(5)] == [10, 10, 10, 10, 10]
    assert tasks.rollups_heal(days=2) == 18
    # Yesterday and the day before match the ledger; day 3 is older than the window; today is not touched.
    assert [_requests(d) for d in range(5)] == [10, 8, 10, 10, 10]
    healed = snapshot()
    assert rollups_heal(days=2) == 18
    assert snapshot() == healed  # twice: the same rows
    assert rollups_heal(days=4) == 37
    assert [_requests(d) for d in range(5)] == [10, 8, 10, 9, 10]
    group_cost = DailyUsage.objects.filter(grain=Grain.GROUP_USER, group_id=engineering.pk).aggregate(
        c=Sum("cost_usd")
    )
    assert group_cost["c"] == Decimal("0.25") * 47  # 10 today (undrifted) + 37 healed


@pytest.mark.django_db(transaction=True)
def test_two_heals_at_once_give_the_rows_of_one(alice: User) -> None:
    group = Group.objects.create(name="engineering")
    _ledger(alice, group)
    results = _at_once(2, lambda: rollups_heal(days=4))
    assert 37 in results and set(results) <= {37, None}  # PostgreSQL: the second skips (advisory lock)
    concurrent = snapshot()
    rollups_heal(days=4)
    assert snapshot() == concurrent
    assert [_requests(d) for d in range(5)] == [10, 8, 10, 9, 10]


@pytest.mark.django_db(transaction=True)
def test_a_heal_while_the_ledger_is_written_neither_loses_nor_doubles_an_event(alice: User) -> None:
    group = Group.objects.create(name="engineering")
    _ledger(alice, group)
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        try:
            n = 10_000
            while not stop.is_set() and n < 10_400:
                # Late events for yesterday, each on a new model: new rollup rows, the racy case.
                events_write(events=[event(n + i, ts=_days_ago(1, hour=13), user=alice.pk, groups=[group.pk],
                                           model=f"late{n + i}") for i in range(5)])  # fmt: skip
                written.append(5)
                n += 5
        finally:
            connection.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        heals = 0
        while heals < 5 and time.monotonic() < deadline:
            assert rollups_heal(days=2) is not None
            heals += 1
    finally:
        stop.set()
        thread.join(timeout=30)
    assert heals == 5 and written
    ledger_yesterday = UsageEvent.objects.filter(created_at__gte=datetime.fromtimestamp(_days_ago(1, 0), tz=UTC),
                                                 created_at__lt=datetime.fromtimestamp(_days_ago(0, 0), tz=UTC))  # fmt: skip
    assert ledger_yesterday.count() == 8 + sum(written)
    assert _requests(1) == 8 + sum(written)
    for grain in (Grain.USER, Grain.APP_MODEL, Grain.GROUP_USER, Grain.GROUP_FULL):
        day = day_of(datetime.now(tz=UTC)) - timedelta(days=1)
        assert DailyUsage.objects.filter(grain=grain, day=day).aggregate(n=Sum("requests"))["n"] == 8 + sum(
            written
        )


# --- counters ---------------------------------------------------------------------------------------------
@pytest.fixture
def counters(alice: User) -> Iterator[dict[str, list[int]]]:
    """Counters of the current, the just-ended (within the grace hour) and long-ended windows."""
    now = time.time()
    kept: list[int] = []
    stale: list[int] = []
    for window in ("minute", "hour", "day", "month", "total"):
        rule = QuotaRule.objects.create(
            subject_type="user", user=alice, metric="requests", window=window, limit=10
        )
        current, _ = bounds(window, now)
        kept.append(QuotaCounter.objects.create(rule=rule, subject=f"u{alice.pk}", bucket=current, used=1).pk)
        if window == "total":
            continue
        graced, _ = bounds(window, now - COUNTER_GRACE_SECONDS)
        previous, _ = bounds(window, graced - 1)  # the window before: ended over an hour ago
        if graced != current:
            kept.append(
                QuotaCounter.objects.create(rule=rule, subject=f"u{alice.pk}", bucket=graced, used=2).pk
            )
        stale.append(
            QuotaCounter.objects.create(rule=rule, subject=f"u{alice.pk}", bucket=previous, used=3).pk
        )
        stale.append(QuotaCounter.objects.create(rule=rule, subject="u999", bucket=previous - 86400 * 40).pk)
    yield {"kept": kept, "stale": stale}


@pytest.mark.django_db
def test_the_purge_deletes_the_counters_of_ended_windows_only(counters: dict[str, list[int]]) -> None:
    assert tasks.counters_purge() == len(counters["stale"])
    assert sorted(QuotaCounter.objects.values_list("pk", flat=True)) == sorted(counters["kept"])
    assert counters_purge() == 0  # twice: nothing more


@pytest.mark.django_db(transaction=True)
def test_two_purges_at_once_delete_each_row_once(counters: dict[str, list[int]]) -> None:
    results = _at_once(2, counters_purge)
    assert sum(results) == len(counters["stale"])
    assert sorted(QuotaCounter.objects.values_list("pk", flat=True)) == sorted(counters["kept"])


# --- alerts ------------------------------------------------------------------------------------------------
def _alerts(user: User, *, count: int) -> dict[str, list[int]]:
    rule = QuotaRule.objects.create(subject_type="user", user=user, metric="requests", window="day", limit=10,
                                    warn_at_percent=50)  # fmt: skip
    soon = datetime.now(tz=UTC) + timedelta(hours=5)
    rows: dict[str, list[int]] = {"due": [], "fresh": [], "ended": [], "sent": []}
    for i in range(count):
        rows["due"].append(QuotaAlert.objects.create(rule=rule, subject=f"u{i}", bucket=i, user=user, used=6, limit=10,
                                                     window_ends_at=soon).pk)  # fmt: skip
    rows["fresh"].append(QuotaAlert.objects.create(rule=rule, subject="fresh", bucket=0, user=user, used=6, limit=10,
                                                   window_ends_at=soon).pk)  # fmt: skip
    rows["ended"].append(QuotaAlert.objects.create(rule=rule, subject="ended", bucket=0, user=user, used=6, limit=10,
                                                   window_ends_at=datetime.now(tz=UTC) - timedelta(minutes=1)).pk)  # fmt: skip
    rows["sent"].append(QuotaAlert.objects.create(rule=rule, subject="sent", bucket=0, user=user, used=6, limit=10,
                                                  window_ends_at=soon, notified_at=datetime.now(tz=UTC)).pk)  # fmt: skip
    # Recorded 20 minutes ago: their notification task had its chance (its queueing failed, say).
    old = datetime.now(tz=UTC) - timedelta(minutes=20)
    QuotaAlert.objects.exclude(pk__in=rows["fresh"]).update(created_at=old)
    return rows


@pytest.mark.django_db
def test_the_resend_sends_the_warnings_that_never_went_out_once(
    alice: User, settings: Any, webhook: list[dict[str, Any]]
) -> None:
    settings.QUOTA_ALERT_WEBHOOK_URL = webhook.pop(0)["url"]
    rows = _alerts(alice, count=3)
    assert tasks.alerts_resend() == 3
    assert len(webhook) == 3 and len(mail.outbox) == 3 and mail.outbox[0].to == ["alice@example.com"]
    assert sorted(a["subject"] for a in webhook) == ["u0", "u1", "u2"]
    assert set(QuotaAlert.objects.filter(notified_at__isnull=True).values_list("pk", flat=True)) == {
        *rows["fresh"], *rows["ended"]}  # fmt: skip
    assert alerts_resend() == 0 and len(webhook) == 3  # twice: nothing more


@pytest.mark.django_db
def test_a_failed_webhook_leaves_the_warning_for_the_next_run(alice: User, settings: Any) -> None:
    from tests.support.processes import free_port

    settings.QUOTA_ALERT_WEBHOOK_URL = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens
    _alerts(alice, count=1)
    assert alerts_resend() == 0
    assert QuotaAlert.objects.filter(subject="u0", notified_at__isnull=True).exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_resends_at_once_send_each_warning_once(
    alice: User, settings: Any, webhook: list[dict[str, Any]]
) -> None:
    assert connection.vendor == "postgresql"
    settings.QUOTA_ALERT_WEBHOOK_URL = webhook.pop(0)["url"]
    _alerts(alice, count=8)
    results = _at_once(3, alerts_resend)
    assert sum(results) == 8
    assert sorted(a["subject"] for a in webhook) == sorted(f"u{i}" for i in range(8))
    assert len(mail.outbox) == 8


def test_the_tasks_are_on_the_beat() -> None:
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert {"quotas.rollups_heal", "quotas.counters_purge", "quotas.alerts_resend"} <= scheduled
