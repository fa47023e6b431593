"""Daily usage rollups (``DailyUsage``): what the dashboard reads instead of the ledger.

``events_insert`` writes a ledger batch with ``INSERT … ON CONFLICT (request_id) DO NOTHING
RETURNING``, so the caller learns which events are new (a re-sent batch after a crash, or a
duplicate request id, returns nothing), and ``rollups_add`` adds exactly those to every grain with
``INSERT … ON CONFLICT DO UPDATE SET n = n + excluded.n``, in the same transaction. On PostgreSQL
both take their rows as arrays (``unnest``: one short statement whatever the batch size); other
databases get a multi-row ``VALUES``. ``rollups_rebuild`` recomputes a date range from the ledger
(``manage.py usage_rollup_rebuild``): in SQL on PostgreSQL, streaming in Python elsewhere.

Days are calendar days in ``QUOTA_TIME_ZONE``, the zone of the monthly budgets, so the chargeback
report's months match the quota months.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction

from quotas.models import LATENCY_BUCKETS_MS, DailyUsage, Grain, UsageEvent

DIMENSIONS = ("group", "user", "key", "app", "model")
# The dimensions each grain keeps; the others are summed over (stored as 0 / "").
GRAINS: dict[int, frozenset[str]] = {
    Grain.APP_MODEL: frozenset({"app", "model"}),
    Grain.USER: frozenset({"user"}),
    Grain.KEY: frozenset({"key"}),
    Grain.GROUP_APP_MODEL: frozenset({"group", "app", "model"}),
    Grain.GROUP_USER: frozenset({"group", "user"}),
    Grain.GROUP_KEY: frozenset({"group", "key"}),
    Grain.USER_MODEL: frozenset({"user", "model"}),
    Grain.KEY_MODEL: frozenset({"key", "model"}),
    Grain.FULL: frozenset({"user", "key", "app", "model"}),
    Grain.GROUP_FULL: frozenset({"group", "user", "key", "app", "model"}),
}
# Smallest first (by the rows a day holds): the dashboard reads the first grain that keeps what
# it filters and groups by; the two full grains, with their indexes, answer the rare combinations.
BY_SIZE = (Grain.APP_MODEL, Grain.GROUP_APP_MODEL, Grain.USER, Grain.KEY, Grain.GROUP_USER, Grain.GROUP_KEY,
           Grain.USER_MODEL, Grain.KEY_MODEL, Grain.FULL, Grain.GROUP_FULL)  # fmt: skip
KEY_COLUMNS = ("grain", "day", "group_id", "user_id", "key_id", "app_id", "model")
LAT_COLUMNS = tuple(f"lat_{i}" for i in range(len(LATENCY_BUCKETS_MS) + 1))
SUMS = ("requests", "errors", "prompt_tokens", "completion_tokens", "cost_usd", "cost_share", "latency_ms_sum",
        *LAT_COLUMNS)  # fmt: skip
MEASURES = (*SUMS, "latency_ms_max")
CHUNK = 500


def grain_for(needed: Iterable[str]) -> int:
    """The smallest grain that keeps every dimension in ``needed``."""
    wanted = frozenset(needed)
    return next(g for g in BY_SIZE if wanted <= GRAINS[g])


def zone() -> ZoneInfo:
    return ZoneInfo(settings.QUOTA_TIME_ZONE)


def day_of(moment: datetime) -> date:
    """The rollup day of ``moment`` (QUOTA_TIME_ZONE)."""
    return moment.astimezone(zone()).date()


def latency_bucket(ms: int) -> int:
    for i, bound in enumerate(LATENCY_BUCKETS_MS):
        if ms <= bound:
            return i
    return len(LATENCY_BUCKETS_MS)


def _qn(name: str) -> str:
    return connection.ops.quote_name(name)


def _pg_type(field: Any) -> str:
    return "jsonb" if field.get_internal_type() == "JSONField" else str(field.db_type(connection))


# --- the ledger -------------------------------------------------------------------------------------
def events_insert(*, rows: Sequence[UsageEvent]) -> list[UsageEvent]:
    """Insert the ledger rows whose request id is new; return exactly those."""
    unique: dict[str, UsageEvent] = {}
    for row in rows:
        unique.setdefault(row.request_id, row)
    batch = list(unique.values())
    fields = [f for f in UsageEvent._meta.concrete_fields if not f.primary_key]
    table = _qn(UsageEvent._meta.db_table)
    columns = ", ".join(_qn(str(f.column)) for f in fields)
    conflict = f"ON CONFLICT ({_qn('request_id')}) DO NOTHING RETURNING {_qn('request_id')}"
    new: set[str] = set()
    db = connections[DEFAULT_DB_ALIAS]  # once: each use of the `connection` proxy is a context lookup
    with db.cursor() as cursor:
        for start in range(0, len(batch), CHUNK):
            chunk = batch[start : start + CHUNK]
            if db.vendor == "postgresql":
                arrays = [[json.dumps(getattr(obj, f.attname)) for obj in chunk] if f.get_internal_type() == "JSONField"
                          else [getattr(obj, f.attname) for obj in chunk] for f in fields]  # fmt: skip
                casts = ", ".join(
                    f"%s::{'text' if _pg_type(f) == 'jsonb' else _pg_type(f)}[]" for f in fields
                )
                select = ", ".join(
                    f"c{i}::jsonb" if _pg_type(f) == "jsonb" else f"c{i}" for i, f in enumerate(fields)
                )
                names = ", ".join(f"c{i}" for i in range(len(fields)))
                cursor.execute(f"INSERT INTO {table} ({columns}) SELECT {select} FROM unnest({casts}) AS t({names}) "
                               f"{conflict}", arrays)  # fmt: skip
            else:
                params = [f.get_db_prep_save(f.pre_save(obj, add=True), db) for obj in chunk for f in fields]
                placeholder = "(" + ", ".join(["%s"] * len(fields)) + ")"
                cursor.execute(f"INSERT INTO {table} ({columns}) VALUES {', '.join([placeholder] * len(chunk))} {conflict}",
                               params)  # fmt: skip
            new.update(r[0] for r in cursor.fetchall())
    return [obj for obj in batch if obj.request_id in new]


# --- the rollups ------------------------------------------------------------------------------------
def _measures(event: UsageEvent) -> dict[str, Any]:
    out: dict[str, Any] = dict.fromkeys(LAT_COLUMNS, 0)
    cost = Decimal(event.cost_usd)
    out.update(requests=1, errors=1 if event.status >= 400 else 0, prompt_tokens=event.prompt_tokens,
               completion_tokens=event.completion_tokens, cost_usd=cost, cost_share=Decimal(0),
               latency_ms_sum=event.latency_ms, latency_ms_max=event.latency_ms)  # fmt: skip
    out[LAT_COLUMNS[latency_bucket(event.latency_ms)]] = 1
    return out


def _add(into: dict[tuple[Any, ...], dict[str, Any]], key: tuple[Any, ...], measures: dict[str, Any]) -> None:
    row = into.get(key)
    if row is None:
        into[key] = dict(measures)
        return
    for name in SUMS:
        row[name] += measures[name]
    row["latency_ms_max"] = max(row["latency_ms_max"], measures["latency_ms_max"])


def rollup_rows(events: Iterable[UsageEvent]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The rollup rows (keyed by KEY_COLUMNS) that ``events`` add up to, every grain.

    The events of a batch mostly share their dimensions (one busy key, one model): they are summed
    per combination of dimensions first, and each combination is then spread over the ten grains
    once, not each event (for a 500-event batch from one key: about a third of the time).
    """
    combos: dict[tuple[Any, ...], dict[str, Any]] = {}
    for event in events:
        groups = tuple(sorted({int(g) for g in event.group_ids or ()}))
        measures = _measures(event)
        if groups:  # each group is charged its share; the grains without groups get none
            measures["cost_share"] = measures["cost_usd"] / len(groups)
        combo = (day_of(event.created_at), event.user_id or 0, event.key_id or 0, event.app_id or 0,
                 event.model or "", groups)  # fmt: skip
        _add(combos, combo, measures)
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for (day, user, key_id, app, model, groups), shared in combos.items():
        values = {"group": 0, "user": user, "key": key_id, "app": app, "model": model}
        measures = {**shared, "cost_share": Decimal(0)}
        for grain, kept in GRAINS.items():
            key = [grain, day] + [values[d] if d in kept else (0 if d != "model" else "") for d in DIMENSIONS]
            if "group" not in kept:
                _add(rows, tuple(key), measures)
                continue
            for group_id in groups:  # an event without groups has no row in the group grains
                key[2] = group_id
                _add(rows, tuple(key), shared)
    return rows


def rollups_add(*, events: Iterable[UsageEvent]) -> None:
    """Add ``events`` (new ledger rows) to every grain; call inside the ledger's transaction."""
    _upsert(rollup_rows(events))


def _upsert(rows: dict[tuple[Any, ...], dict[str, Any]]) -> None:
    if not rows:
        return
    table = _qn(DailyUsage._meta.db_table)
    cols = [*KEY_COLUMNS, *MEASURES]
    biggest = "GREATEST" if connection.vendor == "postgresql" else "MAX"
    updates = [f"{_qn(m)} = {table}.{_qn(m)} + excluded.{_qn(m)}" for m in SUMS]
    updates.append(
        f"{_qn('latency_ms_max')} = {biggest}({table}.{_qn('latency_ms_max')}, excluded.{_qn('latency_ms_max')})"
    )
    conflict = f"ON CONFLICT ({', '.join(_qn(c) for c in KEY_COLUMNS)}) DO UPDATE SET {', '.join(updates)}"
    # Sorted, so concurrent writers lock rollup rows in the same order (no deadlocks).
    ordered = sorted(rows.items(), key=lambda item: tuple(str(v) for v in item[0]))
    tenth = Decimal("1e-10")
    with connection.cursor() as cursor:
        for start in range(0, len(ordered), 5000 if connection.vendor == "postgresql" else CHUNK):
            chunk = ordered[start : start + (5000 if connection.vendor == "postgresql" else CHUNK)]
            records = [[*key, *(values[m].quantize(tenth) if isinstance(values[m], Decimal) else values[m] for m in MEASURES)]
                       for key, values in chunk]  # fmt: skip
            if connection.vendor == "postgresql":
                types = [_pg_type(DailyUsage._meta.get_field(c)) for c in cols]
                arrays = [[r[i] for r in records] for i in range(len(cols))]
                casts = ", ".join(f"%s::{t}[]" for t in types)
                cursor.execute(f"INSERT INTO {table} ({', '.join(_qn(c) for c in cols)}) SELECT * FROM unnest({casts}) "
                               f"{conflict}", arrays)  # fmt: skip
            else:
                day_field = DailyUsage._meta.get_field("day")
                params = []
                for r in records:
                    params.extend([r[0], day_field.get_db_prep_value(r[1], connection), *r[2:]])
                placeholder = "(" + ", ".join(["%s"] * len(cols)) + ")"
                cursor.execute(f"INSERT INTO {table} ({', '.join(_qn(c) for c in cols)}) VALUES "
                               f"{', '.join([placeholder] * len(chunk))} {conflict}", params)  # fmt: skip


# --- rebuild ------------------------------------------------------------------------------------------
def _bounds(since: date | None, until: date | None) -> tuple[datetime | None, datetime | None]:
    tz = zone()
    start = datetime.combine(since, datetime.min.time(), tzinfo=tz).astimezone(UTC) if since else None
    end = (
        datetime.combine(until + timedelta(days=1), datetime.min.time(), tzinfo=tz).astimezone(UTC)
        if until
        else None
    )
    return start, end


@transaction.atomic
def rollups_rebuild(*, since: date | None = None, until: date | None = None) -> int:
    """Recompute the rollups of the days ``since``..``until`` (inclusive; None = unbounded) from the ledger.

    Returns the number of ledger events rolled up. Safe while the gateway writes: the rows being
    replaced are locked until the rebuild commits, and a concurrent batch then adds to the new rows.
    """
    rows = DailyUsage.objects.all()
    if since:
        rows = rows.filter(day__gte=since)
    if until:
        rows = rows.filter(day__lte=until)
    rows.delete()
    start, end = _bounds(since, until)
    if connection.vendor == "postgresql":
        return _rebuild_sql(start, end, since, until)
    events = UsageEvent.objects.all()
    if start:
        events = events.filter(created_at__gte=start)
    if end:
        events = events.filter(created_at__lt=end)
    count = 0
    batch: list[UsageEvent] = []
    for event in events.order_by("pk").iterator(chunk_size=5000):
        batch.append(event)
        if len(batch) >= 5000:
            rollups_add(events=batch)
            count += len(batch)
            batch = []
    rollups_add(events=batch)
    return count + len(batch)


def _rebuild_sql(start: datetime | None, end: datetime | None, since: date | None, until: date | None) -> int:
    """PostgreSQL: the two finest grains from the ledger, every other grain from those."""
    where, params = ["TRUE"], []
    if start:
        where.append("e.created_at >= %s")
        params.append(start)
    if end:
        where.append("e.created_at < %s")
        params.append(end)
    buckets = []
    for i, bound in enumerate(LATENCY_BUCKETS_MS):
        low = LATENCY_BUCKETS_MS[i - 1] if i else -1
        buckets.append(f"COUNT(*) FILTER (WHERE e.latency_ms > {low} AND e.latency_ms <= {bound})")
    buckets.append(f"COUNT(*) FILTER (WHERE e.latency_ms > {LATENCY_BUCKETS_MS[-1]})")
    sums = ("COUNT(*), COUNT(*) FILTER (WHERE e.status >= 400), COALESCE(SUM(e.prompt_tokens), 0), "
            "COALESCE(SUM(e.completion_tokens), 0), COALESCE(SUM(e.cost_usd), 0), {share}, "
            "COALESCE(SUM(e.latency_ms), 0), " + ", ".join(buckets) + ", COALESCE(MAX(e.latency_ms), 0)")  # fmt: skip
    cols = ", ".join([*KEY_COLUMNS, *MEASURES])
    day = "(e.created_at AT TIME ZONE %s)::date"
    ids = "COALESCE(e.user_id, 0), COALESCE(e.key_id, 0), COALESCE(e.app_id, 0), e.model"
    tz = settings.QUOTA_TIME_ZONE
    full = (f"INSERT INTO quotas_dailyusage ({cols}) SELECT {Grain.FULL}, {day}, 0, {ids}, {sums.format(share='0')} "
            f"FROM quotas_usageevent e WHERE {' AND '.join(where)} GROUP BY 2, 4, 5, 6, 7")  # fmt: skip
    share = "COALESCE(SUM(e.cost_usd / jsonb_array_length(e.group_ids)), 0)"
    grouped = (f"INSERT INTO quotas_dailyusage ({cols}) SELECT {Grain.GROUP_FULL}, {day}, g.value::bigint, {ids}, "
               f"{sums.format(share=share)} FROM quotas_usageevent e "
               f"CROSS JOIN LATERAL jsonb_array_elements_text(e.group_ids) AS g(value) "
               f"WHERE {' AND '.join(where)} AND jsonb_typeof(e.group_ids) = 'array' GROUP BY 2, 3, 4, 5, 6, 7")  # fmt: skip
    days, day_params = ["TRUE"], []
    if since:
        days.append("day >= %s")
        day_params.append(since)
    if until:
        days.append("day <= %s")
        day_params.append(until)
    with connection.cursor() as cursor:
        cursor.execute(full, [tz, *params])
        cursor.execute(grouped, [tz, *params])
        for grain, kept in GRAINS.items():
            if grain in (Grain.FULL, Grain.GROUP_FULL):
                continue
            source = Grain.GROUP_FULL if "group" in kept else Grain.FULL
            dims = [c if c.removesuffix("_id") in kept else ("''" if c == "model" else "0")
                    for c in ("group_id", "user_id", "key_id", "app_id", "model")]  # fmt: skip
            measures = ", ".join(f"MAX({m})" if m == "latency_ms_max" else f"SUM({m})" for m in MEASURES)
            # Only the kept columns: a number in GROUP BY would name a select-list position.
            group_by = ", ".join(["day", *(c for c in dims if c[0] not in "'0")])
            cursor.execute(f"INSERT INTO quotas_dailyusage ({cols}) SELECT {grain}, day, {', '.join(dims)}, {measures} "
                           f"FROM quotas_dailyusage WHERE grain = {source} AND {' AND '.join(days)} "
                           f"GROUP BY {group_by}", day_params)  # fmt: skip
        cursor.execute(f"SELECT COALESCE(SUM(requests), 0) FROM quotas_dailyusage WHERE grain = {Grain.FULL} "
                       f"AND {' AND '.join(days)}", day_params)  # fmt: skip
        return int(cursor.fetchone()[0])


def rollup_totals(grain: int = Grain.FULL) -> dict[str, Any]:
    """Sums over one grain (for checks and tests): every grain without groups sums to the ledger."""
    from django.db.models import Sum

    return DailyUsage.objects.filter(grain=grain).aggregate(**{name: Sum(name) for name in SUMS})
