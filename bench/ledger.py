"""What the usage writer spends per event: ``events_write`` of the ledger batches it drains.

Each batch is ``USAGE_FLUSH_BATCH`` (500) new events as the gateway settles them, written with their
rollup upserts and the keys' last use: from one busy key (what ``manage.py usage_writer`` mostly
drains under load) and spread over 50 users in 10 departments. It prints the writer's own CPU per
event (``time.process_time``: what a usage_writer process burns) and the wall time per event (the
database's share included), best of 3 runs of ``--batches`` batches each.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench_ledger .venv/bin/python bench/ledger.py [--batches 20]

Use a database of its own (the script migrates it and adds to its ledger); without DATABASE_URL it
uses SQLite in a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def event(user: Any, key: Any, group: Any) -> dict[str, Any]:
    """One settled chat completion, as ``Call.event()`` makes it."""
    return {"request_id": uuid.uuid4().hex, "ts": time.time(), "key_id": key.pk, "user_id": user.pk,
            "group_ids": [group.pk], "app_id": None, "endpoint": "chat/completions", "provider": "bench",
            "deployment": "bench/gpt-4o-mini", "model": "gpt-4o-mini", "prompt_tokens": 12, "completion_tokens": 3,
            "cached_tokens": 0, "images": 0, "audio_seconds": "0", "cost_usd": "0.0000036", "latency_ms": 2,
            "ttft_ms": 1, "status": 200, "error_kind": "", "streamed": False, "tokens_estimated": False,
            "counted": True, "prompt_id": "", "prompt_version": None}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--batches", type=int, default=20, help="batches per run (default 20)")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("DATA_DIR", tempfile.mkdtemp(prefix="bench-ledger-"))
    os.environ.pop("REDIS_URL", None)
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command

    from gateway.services import key_issue
    from quotas.ledger import events_write

    call_command("migrate", verbosity=0)
    subjects = []
    for i in range(50):
        user, _ = User.objects.get_or_create(username=f"bench-ledger-{i}")
        group, _ = Group.objects.get_or_create(name=f"bench-ledger-{i % 10}")
        key = user.api_keys.first() or key_issue(name="bench", user=user)[0]
        subjects.append((user, key, group))
    size = settings.USAGE_FLUSH_BATCH
    print(
        f"{settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}, batches of {size}, {args.batches} per run"
    )
    for label, spread in (("one key", 1), ("50 users, 10 departments", 50)):
        best: tuple[float, float] | None = None
        for _ in range(3):
            batches = [[event(*subjects[i % spread]) for i in range(size)] for _ in range(args.batches)]
            cpu, wall = time.process_time(), time.perf_counter()
            for batch in batches:
                events_write(events=batch)
            n = size * args.batches
            run = ((time.process_time() - cpu) / n * 1e6, (time.perf_counter() - wall) / n * 1e6)
            best = run if best is None or run[0] < best[0] else best
        assert best is not None
        print(f"{label:<26} writer CPU {best[0]:6.1f} µs/event   wall {best[1]:6.1f} µs/event")


if __name__ == "__main__":
    main()
