"""Fixed quota windows: minute, hour, day and calendar month in the quota time zone, or total."""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo

from django.conf import settings


@cache
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


# The last window computed per (window, time zone): every request asks, and it changes rarely.
_last: dict[tuple[str, str], tuple[int, int]] = {}


def bounds(window: str, now: float) -> tuple[int, int | None]:
    """(start, end) of the window holding ``now``, as epoch seconds; end is None for `total`."""
    if window == "total":
        return 0, None
    zone = settings.QUOTA_TIME_ZONE
    last = _last.get((window, zone))
    if last is not None and last[0] <= now < last[1]:
        return last
    _last[(window, zone)] = found = _bounds(window, now, zone)
    return found


def _bounds(window: str, now: float, zone: str) -> tuple[int, int]:
    moment = datetime.fromtimestamp(now, _zone(zone))
    if window == "minute":
        start = moment.replace(second=0, microsecond=0)
        end = start + timedelta(minutes=1)
    elif window == "hour":
        start = moment.replace(minute=0, second=0, microsecond=0)
        end = start + timedelta(hours=1)
    elif window == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        end = (start + timedelta(days=1, hours=2)).replace(hour=0)  # DST-safe next midnight
    elif window == "month":
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start + timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"unknown window {window!r}")
    return int(start.timestamp()), int(end.timestamp())


def humanize(seconds: float) -> str:
    """OpenAI's reset format: `1s`, `6m0s`, `2h5m3s`."""
    seconds = max(0, int(seconds + 0.999))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
