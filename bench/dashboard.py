"""Every usage-dashboard view over 10 million usage events on PostgreSQL, through the rollups.

Generates the ledger in SQL (``generate_series``, in 1M-row statements): 2,000 users in 40
departments (a fifth of them in two), one key each, 30 apps with a service key, 12 models, 90 days,
skewed like real traffic (a few heavy users and models), 2% errors. Then rebuilds the rollups
(``usage_rollup_rebuild``'s SQL path), and times each view through Django's test client as a
superuser (the whole request: filters, queries, charts, template), median of 5 warm runs. For
contrast it also times one "top users" query on the ledger itself, and what the incremental rollup
upsert costs a 500-event ledger batch.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/h_id .venv/bin/python bench/dashboard.py [--events 10000000] [--reuse]

Use a database of its own: the script migrates it and fills the ledger. ``--reuse`` keeps a ledger
of the right size from a previous run. The table goes to stdout and ``bench/results/dashboard.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

USERS, GROUPS, APPS = 2000, 40, 30
MODELS = [("gpt-4o-mini", 0.15, 0.6), ("gpt-4o", 2.5, 10), ("gpt-4.1", 2, 8), ("gpt-4.1-mini", 0.4, 1.6),
          ("o4-mini", 1.1, 4.4), ("text-embedding-3-small", 0.02, 0), ("claude-sonnet", 3, 15),
          ("claude-haiku", 0.8, 4), ("gemini-flash", 0.1, 0.4), ("gemini-pro", 1.25, 10), ("llama-70b", 0.6, 0.6),
          ("mistral-large", 2, 6)]  # fmt: skip
CHUNK = 1_000_000
RUNS = 5


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--reuse", action="store_true", help="keep an existing ledger of that size")
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
        sys.exit("set DATABASE_URL to a PostgreSQL database of its own")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.pop("REDIS_URL", None)
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    settings.ALLOWED_HOSTS = ["testserver"]
    call_command("migrate", verbosity=0)
    ids = fixtures()
    rows: list[tuple[str, str]] = []
    from quotas.models import UsageEvent

    if not (args.reuse and UsageEvent.objects.filter(request_id__startswith="bench_").count() == args.events):
        took = generate(args.events, ids)
        rows.append((f"generate {args.events:,} ledger rows (SQL)", f"{took:.0f} s"))
    from quotas.rollups import rollups_rebuild

    started = time.perf_counter()
    rolled = rollups_rebuild()
    rows.append((f"rebuild the rollups from {rolled:,} events", f"{time.perf_counter() - started:.0f} s"))
    vacuum()
    rows += sizes()
    rows += time_views(ids)
    rows.append(("events_write: a 500-event batch with its rollup upserts", f"{time_batch(ids):.0f} ms"))
    report(rows, args.events)


def fixtures() -> dict[str, Any]:
    """Departments, users (one key each), apps (one service key each); created once."""
    from django.contrib.auth.models import Group, User

    from gateway import keys
    from gateway.models import ApiKey
    from portal.models import App

    groups = [Group.objects.get_or_create(name=f"dept-{i:02d}")[0] for i in range(GROUPS)]
    if User.objects.filter(username__regex=r"^bench-[0-9]{4}$").count() < USERS:
        User.objects.bulk_create(
            [User(username=f"bench-{i:04d}") for i in range(USERS)], ignore_conflicts=True
        )
    users = list(User.objects.filter(username__regex=r"^bench-[0-9]{4}$").order_by("username"))
    memberships = User.groups.through
    if not memberships.objects.filter(user__in=users[:1]).exists():
        pairs = [memberships(user_id=u.pk, group_id=groups[i % GROUPS].pk) for i, u in enumerate(users)]
        pairs += [memberships(user_id=u.pk, group_id=groups[(i * 7 + 3) % GROUPS].pk) for i, u in enumerate(users)
                  if i % 5 == 0 and (i * 7 + 3) % GROUPS != i % GROUPS]  # fmt: skip
        memberships.objects.bulk_create(pairs, ignore_conflicts=True)
    apps = [App.objects.get_or_create(slug=f"app-{j:02d}", defaults={"name": f"App {j:02d}",
                                                                     "owner_group": groups[j % GROUPS]})[0]
            for j in range(APPS)]  # fmt: skip
    if not ApiKey.objects.filter(user=users[0]).exists():
        new = []
        for owner in [*({"user": u} for u in users), *({"app": a} for a in apps)]:
            plaintext = keys.generate()
            key = ApiKey(name="bench", **owner)  # type: ignore[arg-type]
            key.set_secret(plaintext)
            new.append(key)
        ApiKey.objects.bulk_create(new)
    user_keys = dict(ApiKey.objects.filter(user__in=users).values_list("user_id", "pk"))
    app_keys = dict(ApiKey.objects.filter(app__in=apps).values_list("app_id", "pk"))
    second = {u.pk: groups[(i * 7 + 3) % GROUPS].pk for i, u in enumerate(users) if i % 5 == 0}
    return {
        "users": [u.pk for u in users],
        "user_keys": [user_keys[u.pk] for u in users],
        "g1": [groups[i % GROUPS].pk for i in range(len(users))],
        "g2": [second.get(u.pk, 0) for u in users],
        "apps": [a.pk for a in apps],
        "app_keys": [app_keys[a.pk] for a in apps],
        "app_groups": [a.owner_group_id for a in apps],
        "models": [m[0] for m in MODELS],
        "price_in": [float(m[1]) for m in MODELS],
        "price_out": [float(m[2]) for m in MODELS],
        "groups": [g.pk for g in groups],
    }


GENERATE = """
INSERT INTO quotas_usageevent (request_id, created_at, key_id, user_id, group_ids, app_id, endpoint, provider,
    deployment, model, prompt_tokens, completion_tokens, cached_tokens, images, audio_seconds, cost_usd, latency_ms,
    ttft_ms, status, error_kind, streamed, tokens_estimated, counted)
SELECT 'bench_' || s.g,
    now() - s.t * interval '90 days',
    CASE WHEN s.is_app THEN (%(app_keys)s::bigint[])[s.a] WHEN s.keyed THEN (%(user_keys)s::bigint[])[s.u] END,
    CASE WHEN s.is_app THEN NULL ELSE (%(users)s::bigint[])[s.u] END,
    CASE WHEN s.is_app THEN jsonb_build_array((%(app_groups)s::bigint[])[s.a])
         WHEN (%(g2)s::bigint[])[s.u] <> 0 THEN jsonb_build_array((%(g1)s::bigint[])[s.u], (%(g2)s::bigint[])[s.u])
         ELSE jsonb_build_array((%(g1)s::bigint[])[s.u]) END,
    CASE WHEN s.is_app THEN (%(apps)s::bigint[])[s.a] WHEN s.via_app THEN (%(apps)s::bigint[])[1 + s.u %% 30] END,
    'chat/completions', 'bench', 'bench/' || (%(models)s::text[])[s.m], (%(models)s::text[])[s.m],
    s.p, s.c, 0, 0, 0,
    (s.p * (%(price_in)s::numeric[])[s.m] + s.c * (%(price_out)s::numeric[])[s.m]) / 1000000,
    s.lat, NULL,
    CASE WHEN s.err < 0.01 THEN 429 WHEN s.err < 0.015 THEN 502 WHEN s.err < 0.02 THEN 500 ELSE 200 END,
    CASE WHEN s.err < 0.02 THEN 'bench' ELSE '' END, false, false, true
FROM (
    SELECT g, random() AS t, random() < 0.1 AS is_app, 1 + floor(power(random(), 2) * 30)::int AS a,
        1 + floor(power(random(), 2) * %(n_users)s)::int AS u, random() < 0.7 AS keyed, random() < 0.05 AS via_app,
        1 + floor(power(random(), 1.6) * 12)::int AS m, 20 + floor(random() * 2000)::int AS p,
        floor(random() * 800)::int AS c, 150 + floor(random() * random() * 20000)::int AS lat, random() AS err
    FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g
) AS s
"""


def generate(total: int, ids: dict[str, Any]) -> float:
    from django.db import connection

    from quotas.models import UsageEvent

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE quotas_usageevent, quotas_dailyusage")
        cursor.execute("SET synchronous_commit = off")
        cursor.execute("SET work_mem = '256MB'")
        for lo in range(1, total + 1, CHUNK):
            hi = min(lo + CHUNK - 1, total)
            cursor.execute(GENERATE, {**ids, "lo": lo, "hi": hi, "n_users": len(ids["users"])})
            print(f"  ledger: {hi:,} rows ({time.perf_counter() - started:.0f} s)", flush=True)
    assert UsageEvent.objects.count() == total
    return time.perf_counter() - started


def vacuum() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        for table in ("quotas_usageevent", "quotas_dailyusage"):
            cursor.execute(f"VACUUM ANALYZE {table}")


def sizes() -> list[tuple[str, str]]:
    from django.db import connection

    out = []
    with connection.cursor() as cursor:
        for table in ("quotas_usageevent", "quotas_dailyusage"):
            # A partitioned table has no storage of its own: add up its partitions.
            cursor.execute(
                f"SELECT (SELECT count(*) FROM {table}), pg_size_pretty(pg_total_relation_size('{table}') + "
                f"COALESCE((SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits "
                f"WHERE inhparent = '{table}'::regclass), 0)::bigint)"
            )
            count, size = cursor.fetchone()
            out.append((f"table {table} (with indexes)", f"{count:,} rows, {size}"))
        cursor.execute("SELECT grain, count(*) FROM quotas_dailyusage GROUP BY grain ORDER BY grain")
        out.append(("rollup rows per grain", ", ".join(f"{g}: {n:,}" for g, n in cursor.fetchall())))
    return out


def time_views(ids: dict[str, Any]) -> list[tuple[str, str]]:
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client

    from quotas.dashboard import today

    admin, _ = User.objects.get_or_create(
        username="dashboard-admin", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(admin)
    heavy_user = User.objects.get(pk=ids["users"][0]).username  # the skew makes the first user the heaviest
    end = today()
    month = end.strftime("%Y-%m")
    d90 = {"start": str(end.fromordinal(end.toordinal() - 89))}
    views: list[tuple[str, str, dict[str, Any]]] = [
        ("dashboard, last 30 days (default)", "/admin/dashboard/", {}),
        ("dashboard, 90 days (the whole ledger)", "/admin/dashboard/", d90),
        ("dashboard, 90 days, one department", "/admin/dashboard/", {**d90, "group": ids["groups"][0]}),
        ("dashboard, 90 days, one department and model", "/admin/dashboard/",
         {**d90, "group": ids["groups"][0], "model": "gpt-4o"}),
        ("dashboard, 90 days, the heaviest user", "/admin/dashboard/", {**d90, "user": heavy_user}),
        ("dashboard, 90 days, one key", "/admin/dashboard/", {**d90, "key": ids["user_keys"][0]}),
        ("dashboard, 90 days, one app", "/admin/dashboard/", {**d90, "app": ids["apps"][0]}),
        ("dashboard, 90 days, one model", "/admin/dashboard/", {**d90, "model": "gpt-4o-mini"}),
        ("dashboard, 1 day", "/admin/dashboard/", {"start": str(end), "end": str(end)}),
        ("CSV: all users, 90 days", "/admin/dashboard/", {**d90, "export": "users"}),
        ("CSV: all keys, 90 days", "/admin/dashboard/", {**d90, "export": "keys"}),
        ("CSV: departments, 90 days", "/admin/dashboard/", {**d90, "export": "groups"}),
        ("CSV: apps, 90 days", "/admin/dashboard/", {**d90, "export": "apps"}),
        ("CSV: models, 90 days", "/admin/dashboard/", {**d90, "export": "models"}),
        ("CSV: per day, 90 days", "/admin/dashboard/", {**d90, "export": "daily"}),
        ("chargeback, this month", "/admin/dashboard/chargeback/", {"month": month}),
        ("chargeback CSV, this month", "/admin/dashboard/chargeback/", {"month": month, "export": "csv"}),
    ]  # fmt: skip
    out = []
    worst = 0.0
    for label, url, params in views:
        times = []
        for _ in range(RUNS + 1):
            started = time.perf_counter()
            response = client.get(url, params)
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (label, response.status_code)
        median = statistics.median(times[1:])  # the first run warms the caches
        worst = max(worst, max(times[1:]))
        out.append((label, f"{median:.0f} ms (max {max(times[1:]):.0f})"))
        print(f"  {label}: {median:.0f} ms", flush=True)
    out.append(("slowest single view request", f"{worst:.0f} ms"))
    with connection.cursor() as cursor:  # the same "top users" read without rollups, for contrast
        started = time.perf_counter()
        cursor.execute(
            "SELECT user_id, count(*), sum(prompt_tokens + completion_tokens), sum(cost_usd) FROM quotas_usageevent "
            "WHERE created_at >= now() - interval '90 days' GROUP BY user_id ORDER BY 4 DESC LIMIT 10"
        )
        cursor.fetchall()
        out.append(
            (
                "for contrast: top users from the ledger itself, 90 days",
                f"{(time.perf_counter() - started) * 1000:.0f} ms",
            )
        )
    return out


def time_batch(ids: dict[str, Any]) -> float:
    """events_write of 500 new events (ledger insert + rollup upserts + last use), median of 5."""
    import uuid

    from django.utils import timezone

    from quotas.ledger import events_write
    from quotas.models import UsageEvent

    runs = []
    for _ in range(5):
        now = timezone.now().timestamp()
        batch = [{"request_id": f"batch_{uuid.uuid4().hex}", "ts": now, "key_id": ids["user_keys"][i % 50],
                  "user_id": ids["users"][i % 50], "group_ids": [ids["g1"][i % 50]], "app_id": None,
                  "endpoint": "chat/completions", "provider": "bench", "deployment": "bench/gpt-4o-mini",
                  "model": "gpt-4o-mini", "prompt_tokens": 100, "completion_tokens": 20, "cached_tokens": 0,
                  "images": 0, "audio_seconds": "0", "cost_usd": "0.0001", "latency_ms": 300, "ttft_ms": None,
                  "status": 200, "error_kind": "", "streamed": False, "tokens_estimated": False, "counted": True}
                 for i in range(500)]  # fmt: skip
        started = time.perf_counter()
        events_write(events=batch)
        runs.append((time.perf_counter() - started) * 1000)
    UsageEvent.objects.filter(request_id__startswith="batch_").delete()  # keep the ledger at its size
    return statistics.median(runs)


def report(rows: list[tuple[str, str]], events: int) -> None:
    import platform

    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        version = cursor.fetchone()[0]
    lines = [f"Usage dashboard over {events:,} events — PostgreSQL {version}, {os.cpu_count()} cores, "
             f"Python {platform.python_version()}", "", "| what | time |", "| --- | ---: |"]  # fmt: skip
    lines += [f"| {label} | {value} |" for label, value in rows]
    text = "\n".join(lines)
    print("\n" + text)
    out = ROOT / "bench" / "results" / "dashboard.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
