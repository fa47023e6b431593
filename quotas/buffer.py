"""The durable usage buffer between settlement and the ledger.

Settlement appends one event and returns at once; a flusher writes batches to the database. With
Redis, events go to a Redis list that any process may drain under a short lock (so several web
processes, the usage writer and the maintenance worker can all run flushers safely); with
``USAGE_WEB_DRAIN`` off, web processes only append and ``manage.py usage_writer`` drains. Without
Redis, each process keeps its own in-memory list and flushes it on a timer and at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

import orjson
import redis.exceptions
from django.conf import settings

from config.db import DB_UNREACHABLE, adb
from quotas.ledger import events_write

logger = logging.getLogger(__name__)

# A server away (restarting, unreachable): expected during an outage, logged without a traceback.
UNREACHABLE = (
    *DB_UNREACHABLE,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)

REDIS_LIST = "usage:{buffer}:events"
REDIS_LOCK = "usage:{buffer}:drain-lock"
# Long enough for one batch write; short enough that a crashed drainer blocks others only briefly.
LOCK_MS = 10_000

# Deletes the lock only if we still own it.
_UNLOCK = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class MemoryBuffer:
    """Events kept in this process until the next flush (embedded mode, or Redis unreachable)."""

    def __init__(self) -> None:
        self.pending: list[dict[str, Any]] = []

    async def put(self, event: dict[str, Any]) -> None:
        self.pending.append(event)

    async def flush(self) -> int:
        batch, self.pending = self.pending, []
        if not batch:
            return 0
        try:
            return await adb(events_write, events=batch)
        except Exception as exc:
            # Keep them for the next attempt: the database may be restarting.
            self.pending[:0] = batch
            if isinstance(exc, UNREACHABLE):
                logger.warning(
                    "usage flush failed (%s); %d events kept for retry", type(exc).__name__, len(batch)
                )
            else:
                logger.exception("usage flush failed; %d events kept for retry", len(batch))
            return 0


class RedisBuffer:
    """Events in a Redis list, drained in batches by whichever process holds the lock."""

    def __init__(self, client: Any, *, drain: bool = True) -> None:
        self.client = client
        # False: this process only appends (and writes what it had to keep in memory); another
        # process drains the list.
        self.drain = drain
        self.fallback = MemoryBuffer()
        # A drain lock we could not release (Redis went away mid-drain): released at the next flush,
        # or an AOF Redis would keep every drainer out until the lock expires.
        self.unreleased: str | None = None

    async def put(self, event: dict[str, Any]) -> None:
        try:
            await self.client.rpush(REDIS_LIST, orjson.dumps(event))
        except Exception:
            logger.warning("Redis unreachable: usage event %s kept in memory", event.get("request_id"))
            await self.fallback.put(event)

    async def flush(self) -> int:
        written = await self.fallback.flush()
        if not self.drain:
            return written
        if self.unreleased is not None:
            with contextlib.suppress(Exception):
                await self.client.eval(_UNLOCK, 1, REDIS_LOCK, self.unreleased)
                self.unreleased = None
        token = uuid.uuid4().hex
        try:
            # Inside the try: a cancel right after SET still releases the lock below.
            if not await self.client.set(REDIS_LOCK, token, nx=True, px=LOCK_MS):
                return written
            while True:
                raw = await self.client.lrange(REDIS_LIST, 0, settings.USAGE_FLUSH_BATCH - 1)
                if not raw:
                    break
                events = [orjson.loads(item) for item in raw]
                # Written first, trimmed after: a crash in between re-writes the batch, and the
                # unique request id makes that harmless.
                written += await adb(events_write, events=events)
                await self.client.ltrim(REDIS_LIST, len(raw), -1)
                if len(raw) < settings.USAGE_FLUSH_BATCH:
                    break
        except UNREACHABLE as exc:
            logger.warning("usage drain failed (%s); events stay in Redis", type(exc).__name__)
        except Exception:
            logger.exception("usage drain failed; events stay in Redis")
        finally:
            try:
                await self.client.eval(_UNLOCK, 1, REDIS_LOCK, token)
            except Exception:
                self.unreleased = token
        return written


def cancel_requested() -> bool:
    """Whether this task was asked to stop, even if a library turned the CancelledError into an
    error we handle (redis-py can: a cancel that meets a socket timeout). A background loop that
    went on would keep its event loop from closing: asyncio.run waits for every task it cancelled.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class Flusher:
    """Runs ``buffer.flush`` every USAGE_FLUSH_INTERVAL seconds until stopped."""

    def __init__(self, buffer: MemoryBuffer | RedisBuffer, interval: float | None = None) -> None:
        self.buffer = buffer
        self.interval = interval  # None: USAGE_FLUSH_INTERVAL
        self.written = 0  # events this flusher wrote to the ledger
        self.task: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()
        self.stopping = False

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run(), name="usage-flusher")

    async def _run(self) -> None:
        while not self.stopping and not cancel_requested():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.interval or settings.USAGE_FLUSH_INTERVAL)
            self.wake.clear()
            try:
                self.written += await self.buffer.flush()
            except Exception:
                logger.exception("usage flush failed")

    async def stop(self) -> None:
        """Let the current flush finish, then write whatever is pending (graceful shutdown loses nothing)."""
        self.stopping = True
        self.wake.set()
        if self.task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.task, 30)
            self.task = None
        self.written += await self.buffer.flush()


def drain_once() -> int:
    """One full drain of the Redis buffer from synchronous code (the maintenance task); 0 without Redis."""
    if not settings.REDIS_URL:
        return 0
    import redis.asyncio as aioredis

    async def run() -> int:
        client = aioredis.Redis.from_url(settings.REDIS_URL)
        try:
            return await RedisBuffer(client).flush()
        finally:
            await client.aclose()

    return asyncio.run(run())
