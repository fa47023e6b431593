"""Quota windows: calendar bounds in the quota time zone, and the cache of the last window."""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from quotas.windows import _bounds, bounds

BERLIN = ZoneInfo("Europe/Berlin")


def _at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=BERLIN).timestamp()


@pytest.mark.parametrize(
    ("window", "moment", "start", "end"),
    [
        ("minute", "2026-03-29 01:59:30", "2026-03-29 01:59:00", "2026-03-29 03:00:00"),  # clocks go forward
        ("hour", "2026-10-25 02:30:00", "2026-10-25 02:00:00", "2026-10-25 03:00:00"),
        ("day", "2026-03-29 12:00:00", "2026-03-29 00:00:00", "2026-03-30 00:00:00"),  # a 23-hour day
        ("day", "2026-10-25 12:00:00", "2026-10-25 00:00:00", "2026-10-26 00:00:00"),  # a 25-hour day
        ("month", "2026-02-14 08:00:00", "2026-02-01 00:00:00", "2026-03-01 00:00:00"),
        ("month", "2026-12-31 23:59:59", "2026-12-01 00:00:00", "2027-01-01 00:00:00"),
    ],
)
def test_windows_follow_the_calendar_of_the_quota_time_zone(
    settings: Any, window: str, moment: str, start: str, end: str
) -> None:
    settings.QUOTA_TIME_ZONE = "Europe/Berlin"
    assert bounds(window, _at(moment)) == (int(_at(start)), int(_at(end)))
    assert bounds("total", _at(moment)) == (0, None)


def test_the_cached_window_is_the_computed_one_in_any_order_and_zone(settings: Any) -> None:
    rng = random.Random(7)
    moments = [_at("2026-01-01 00:00:00") + rng.uniform(0, 400 * 86400) for _ in range(300)]
    moments += [m + d for m in moments[:50] for d in (-1, 0, 1)]  # next to a few and back again
    for zone in ("Europe/Berlin", "UTC", "America/New_York"):
        settings.QUOTA_TIME_ZONE = zone
        for now in moments:
            for window in ("minute", "hour", "day", "month"):
                start, end = bounds(window, now)
                assert (start, end) == _bounds(window, now, zone) and end is not None and start <= now < end
