"""What admission plus settlement adds per request with three quota rules, per backend.

Runs in-process: migrates a throw-away SQLite database, creates a user in a group with three rules
(requests per minute for the user, tokens per day for the user, a monthly cost budget for the
group), then times `usage_admit` + `usage_settle` N times on the embedded backend (database
counters) and, with `--redis URL`, on the Redis backend (one Lua script each way).

    .venv/bin/python bench/quotas.py [--n 2000] [--redis redis://127.0.0.1:6379/14]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument(
        "--redis", default="", help="also measure the Redis backend (its database is flushed)"
    )
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-quotas-")
    os.environ.update({"DJANGO_SETTINGS_MODULE": "config.settings", "DATA_DIR": tmp, "LOG_LEVEL": "WARNING"})
    for name in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        os.environ.pop(name, None)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    results = [run("embedded (database counters)", None, args.n)]
    if args.redis:
        import redis

        redis.Redis.from_url(args.redis).flushdb()
        results.append(run("redis (Lua script)", args.redis, args.n))
    out = ROOT / "bench" / "results" / "quotas.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"written to {out}")


def run(label: str, redis_url: str | None, n: int) -> dict[str, object]:
    from django.conf import settings
    from django.contrib.auth.models import Group, User

    from gateway.catalog import Principal
    from quotas.engine import Demand, load_rules
    from quotas.models import QuotaRule
    from quotas.services import usage_admit, usage_settle

    settings.REDIS_URL = redis_url or ""
    group, _ = Group.objects.get_or_create(name="bench")
    user, _ = User.objects.get_or_create(username="bench")
    user.groups.add(group)
    QuotaRule.objects.all().delete()
    QuotaRule.objects.create(subject_type="user", user=user, metric="requests", window="minute", limit=10**9)
    QuotaRule.objects.create(subject_type="user", user=user, metric="tokens", window="day", limit=10**11)
    QuotaRule.objects.create(
        subject_type="group", group=group, metric="cost_usd", window="month", limit=10**9
    )
    rules = load_rules()
    principal = Principal(user_id=user.pk, username="bench", group_ids=frozenset({group.pk}))

    async def measure() -> list[float]:
        from gateway.state import GatewayState
        from quotas.buffer import MemoryBuffer

        state = GatewayState()
        demand = Demand(tokens=1200, cost_usd=0.0007)
        timings = []
        for i in range(n + 50):
            event = {"request_id": f"b{i}", "ts": time.time(), "prompt_tokens": 20, "completion_tokens": 30,
                     "cost_usd": "0.00002", "images": 0, "audio_seconds": "0", "status": 200}  # fmt: skip
            started = time.perf_counter()
            reservation = await usage_admit(
                state=state, rules=rules, principal=principal, model="m", demand=demand
            )
            await usage_settle(state=state, reservation=reservation, event=event)
            if i >= 50:  # warm-up
                timings.append((time.perf_counter() - started) * 1e6)
            if isinstance(state.buffer, MemoryBuffer):
                state.buffer.pending.clear()  # the ledger writer is not what is measured here
        if state.redis is not None:
            await state.redis.delete("usage:{buffer}:events")
            await state.redis.aclose()
        await state.http.aclose()
        return timings

    timings = sorted(asyncio.run(measure()))
    row = {
        "backend": label, "rules": 3, "n": n, "mean_us": statistics.fmean(timings),
        "p50_us": timings[len(timings) // 2], "p99_us": timings[int(len(timings) * 0.99)],
    }  # fmt: skip
    print(
        f"{label:32} admit+settle, 3 rules: mean {row['mean_us']:8.0f} µs  p50 {row['p50_us']:8.0f} µs  p99 {row['p99_us']:8.0f} µs"
    )
    return row


if __name__ == "__main__":
    main()
