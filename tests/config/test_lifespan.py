"""The ASGI lifespan startup freezes what the imports left alive out of the garbage collector."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from typing import Any

from config import lifespan
from tests.support.processes import child_env

PROBE = """
import asyncio, gc, json, time
import config.asgi
from config import lifespan
before = gc.get_freeze_count()
asyncio.run(lifespan.run(lifespan.startup_hooks))
started = time.perf_counter()
gc.collect()
print(json.dumps({"before": before, "after": gc.get_freeze_count(), "tracked": len(gc.get_objects()),
                  "full_collection_ms": (time.perf_counter() - started) * 1000}))
"""


def test_startup_freezes_the_objects_of_the_imports() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=child_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["before"] == 0
    # Everything the imports and the URL configuration made: far more than what is left to scan.
    assert found["after"] > 100_000 > found["tracked"] * 5, found


async def test_gc_freeze_false_leaves_the_collector_alone(settings: Any) -> None:
    settings.GC_FREEZE = False
    before = gc.get_freeze_count()
    await lifespan.freeze_startup_objects()
    assert gc.get_freeze_count() == before
